#!/usr/bin/env bash
# System packages some tests use: Debian's Chromium and its chromedriver, which tests/test_reader_study.py drives
# through selenium to answer a reader-study page in a real headless browser. Installed quietly with apt-get.
# Never fails the build: without root or without apt-get (or when the install fails) it says so and exits 0,
# and those tests skip with the reason.
PACKAGES="chromium chromium-driver"

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0  # already there
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-packages: no apt-get here; skipping $PACKAGES (the browser tests will skip)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install-system-packages: not root (and no password-less sudo); skipping $PACKAGES (the browser tests will skip)"
    exit 0
  fi
else
  SUDO=""
fi

export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq >/dev/null \
   && $SUDO apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null; then
  echo "install-system-packages: installed $PACKAGES ($(chromium --version 2>/dev/null || echo 'chromium version unknown'))"
else
  echo "install-system-packages: apt-get could not install $PACKAGES; continuing (the browser tests will skip)"
fi
exit 0
