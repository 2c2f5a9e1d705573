"""Regenerate patches/*.patch against the current erc_minimal.py, after an edit moved their lines.

    python dev/regenerate_patches.py

Each patch is applied with GNU patch (fuzz 3: its context lines may have changed) to a copy of erc_minimal.py and
rewritten as the diff from the current file; patches/BASE.sha256 then records the file they apply to, which
the tests compare with. A patch that no longer applies is named and left as it is (exit code 1): edit it by hand.
The tests apply each regenerated patch and run the patched script, so a hunk that fuzz put in a wrong place fails."""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, "patches")


def main():
    source = os.path.join(ROOT, "erc_minimal.py")
    failed = []
    for name in sorted(n for n in os.listdir(FOLDER) if n.endswith(".patch")):
        patch = os.path.join(FOLDER, name)
        with tempfile.TemporaryDirectory() as tmp:
            target = os.path.join(tmp, "erc_minimal.py")
            shutil.copy(source, target)
            run = subprocess.run(["patch", "-F3", "--no-backup-if-mismatch", "-r", os.devnull, target, patch],
                                 capture_output=True, text=True)
            if run.returncode:
                failed.append(name)
                print(f"{name}: does not apply, edit it by hand: {run.stdout.strip()}")
                continue
            diff = subprocess.run(["diff", "-u", "--label", "a/erc_minimal.py", "--label", "b/erc_minimal.py", source,
                                   target], capture_output=True, text=True).stdout
        with open(patch, "w") as f:
            f.write(diff)
        print(f"{name}: regenerated")
    if failed:
        sys.exit(1)
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(FOLDER, "BASE.sha256"), "w") as f:
        f.write(f"{digest}  erc_minimal.py\n")


if __name__ == "__main__":
    main()
