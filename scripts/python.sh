# Sourced by install.sh and quickstart.sh: sets PY, the Python to install into and run with.
# $PYTHON if set; else python3, unless it is a system Python that refuses pip installs
# ("externally managed", as on Debian and Ubuntu): then a virtual environment in .venv.
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && "$PY" - <<'PYEOF'
import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)
PYEOF
then
    if [ ! -x .venv/bin/python ]; then
        echo "$PY is managed by the system and refuses pip installs: creating a virtual environment in .venv"
        "$PY" -m venv .venv
    fi
    PY=.venv/bin/python
fi
