#!/usr/bin/env bash
# Runs every test of vfbroker: unit, host integration (real broker, tenants under other uids,
# real loop devices; needs root), deployment checks, and the QEMU guest tests of real VFIO
# (tests/vm; VFBROKER_VM_REQUIRED=1 makes them fail rather than skip without QEMU). Ends with "N passed, N failed" counted over
# individual test cases.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1

VFBROKER_VM_REQUIRED=${VFBROKER_VM_REQUIRED:-1} bazel test //... --test_output=errors "$@"
bazel_status=$?

# Count test cases from the JUnit XML Bazel writes for each test target.
python3 - <<'PY'
import glob, os, sys
import xml.etree.ElementTree as ET
passed = failed = skipped = 0
for path in glob.glob("bazel-testlogs/**/test.xml", recursive=True):
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        failed += 1
        print(f"unreadable test log: {path}")
        continue
    cases = root.iter("testcase")
    seen = False
    for case in cases:
        seen = True
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.get("result") == "skipped" or case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    if not seen:  # a target without per-case results (sh_test): judge it by its own counts
        failures = int(root.get("failures", "0") or 0) + int(root.get("errors", "0") or 0)
        if failures:
            failed += 1
        else:
            passed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
exit $bazel_status
