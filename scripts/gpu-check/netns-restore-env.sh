#!/bin/sh
# Second half of ip-wrapper.sh: the caller's LD_LIBRARY_PATH back, then exec in place.
if [ "${IPW_ORIG_LDLP-__unset__}" = __unset__ ]; then
  unset LD_LIBRARY_PATH
else
  LD_LIBRARY_PATH=$IPW_ORIG_LDLP
  export LD_LIBRARY_PATH
fi
unset IPW_ORIG_LDLP
exec "$@"
