#!/bin/sh
# git for a machine without it: Debian's git binary, its commands and templates beside it
# (git looks for them at a compiled-in /usr/lib/git-core otherwise).
here=$(dirname "$(readlink -f "$0")")
GIT_EXEC_PATH=$here/../git-core
GIT_TEMPLATE_DIR=$here/../templates
export GIT_EXEC_PATH GIT_TEMPLATE_DIR
exec "$here/git.real" "$@"
