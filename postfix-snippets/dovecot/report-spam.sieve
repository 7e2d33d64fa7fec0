# Moved (or appended) into Spam: the user says this is spam. Pigeonhole IMAPSieve runs this
# (imapsieve_mailbox1_before); it pipes the message to postward-retrain, which reads the
# X-DSPAM-Signature header and corrects the user's model.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}
pipe :copy "postward-retrain" ["--user", "${username}", "--class=spam", "--source=error"];
