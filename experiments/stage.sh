# Sourced by the study scripts: `stage NAME COMMAND...` runs COMMAND unless the time (UTC) is past STOP_AT (HH:MM;
# empty: no stop), printing when it started and ended, so that a stage not run is reported as not run.
stage() {
    if [ -n "${STOP_AT:-}" ] && [ "$(date -u +%H%M)" \> "${STOP_AT/:/}" ]; then
        echo "$(date -u +%FT%TZ) not started (past $STOP_AT): $1"; return 0
    fi
    echo "$(date -u +%FT%TZ) start: $1"; local start=$SECONDS
    "${@:2}"
    echo "$(date -u +%FT%TZ) done: $1 ($((SECONDS - start)) s)"
}
