#!/usr/bin/env bash
# System packages some tests use, installed quietly with apt-get, one group at a time:
# - browser: Debian's Chromium and its chromedriver, which tests/test_reader_study.py drives through selenium to
#   answer a reader-study page in a real headless browser;
# - slurm: SLURM (slurmctld, slurmd, slurmdbd and the client commands), munge and MariaDB, from which
#   tests/test_slurm_cluster.py starts a private one-node cluster (tests/slurm_support.py) to run the pipeline
#   through workflow/profiles/slurm. Only the packages are installed: no daemon is started or enabled here.
# Never fails the build: without root or without apt-get, or when a group cannot be installed, it says so and
# goes on with the next group (exit 0); the tests that need a missing group skip with the reason.
BROWSER="chromium chromium-driver"
SLURM="slurmctld slurmd slurmdbd slurm-client munge mariadb-server"

have_browser() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
have_slurm() {
  local c
  for c in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd; do
    command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || return 1
  done
}

missing=()
have_browser || missing+=(browser)
have_slurm || missing+=(slurm)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0  # already there
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-packages: no apt-get here; skipping ${missing[*]} (the tests that need them will skip)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install-system-packages: not root (and no password-less sudo); skipping ${missing[*]} (the tests that need them will skip)"
    exit 0
  fi
else
  SUDO=""
fi

export DEBIAN_FRONTEND=noninteractive
# Packages' post-install scripts must not start daemons (munge, mariadb) on this machine: the SLURM test runs its
# own in a private folder. policy-rc.d is honoured by invoke-rc.d; an existing one is left as it is.
POLICY=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$POLICY" ] && $SUDO sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY" 2>/dev/null; then
  made_policy=1
fi
if ! $SUDO apt-get update -qq >/dev/null 2>&1; then
  echo "install-system-packages: apt-get update failed; trying the package lists already here"
fi

install_group() {  # name, check function, packages...
  local name=$1 check=$2
  shift 2
  if $check; then
    return 0
  fi
  if $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 && $check; then
    echo "install-system-packages: installed $name ($*)"
  else
    echo "install-system-packages: apt-get could not install $name ($*); continuing (the tests that need it will skip)"
  fi
}

install_group browser have_browser $BROWSER
if have_browser; then
  echo "install-system-packages: $(chromium --version 2>/dev/null || echo 'chromium version unknown')"
fi
install_group slurm have_slurm $SLURM

if [ -n "$made_policy" ]; then
  $SUDO rm -f "$POLICY"
fi
exit 0
