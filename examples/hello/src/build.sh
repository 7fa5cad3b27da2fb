#!/bin/sh
# The "build" of the example: a greeting with the commit it was built from.
echo "hello from ${APP_NAME:-hello}, built from ${CI_COMMIT_SHORT_SHA:-?}"
