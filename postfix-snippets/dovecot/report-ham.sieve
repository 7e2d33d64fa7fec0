# Moved out of Spam (to anywhere but the trash): the user says this is not spam.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}
if string :comparator "i;ascii-casemap" "${mailbox}" ["Trash", "trash"] {
  stop;
}
if environment :matches "imap.user" "*" {
  set "username" "${1}";
}
pipe :copy "postward-retrain" ["--user", "${username}", "--class=innocent", "--source=error"];
