"""postward-filter as Postfix's pipe(8) runs it: ``python -I -S postward-filter.py ARGS``.

Installed as /opt/postward/lib/postward-filter.py next to filter_client.py (debian/rules). It
is this small because Python compiles the script it is given at every start (``__main__`` is
never cached: ~3 ms for filter_client.py), while a module it imports comes from its
__pycache__ .pyc, which the package's postinst writes (``compileall /opt/postward/lib``) since
the pipe user cannot. The same file runs from the checkout, next to filter_client.py there.
"""

import sys


def _main():
    # -I leaves the script's directory off sys.path. Appended, not prepended: a file next to
    # this one can never shadow a standard-library module. (__file__ of a script is absolute.)
    sys.path.append(__file__.rpartition("/")[0] or "/")
    try:
        try:
            from filter_client import main
        except ImportError:
            # Run through a symlink: filter_client.py is next to the file it points to.
            import os.path

            sys.path.append(os.path.dirname(os.path.realpath(__file__)))
            from filter_client import main
    except Exception as e:  # a broken install defers the mail (75); a traceback's 1 bounces it
        sys.stderr.write(f"postward-filter: cannot load filter_client.py next to {__file__}: "
                         f"{e}; deferring\n")
        return 75
    return main()


if __name__ == "__main__":
    sys.exit(_main())
