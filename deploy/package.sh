#!/usr/bin/env bash
# Builds the handler for x86-64 Linux and assembles the Azure Functions package:
#
#   host.json                    customHandler config (app root = zip root)
#   Ingest/function.json         one folder per function, as the host requires
#   BlobCreated/function.json
#   handler                      the executable, mode 0755, at host.json's
#                                customHandler.description.defaultExecutablePath
#
# then checks the zip's layout and exits non-zero when it is wrong. local.settings.json is never packaged.
#
# Usage: deploy/package.sh [--debug] [--out PATH] [--target TRIPLE] [--app-root DIR]
#        deploy/package.sh --check ZIP        (only check an existing zip)
#
#   --debug       debug build (default: release)
#   --out PATH    where to write the zip (default: dist/kusto-ingest-api.zip)
#   --target T    Rust target triple (default: x86_64-unknown-linux-musl when that target is installed,
#                 else the host's x86_64-unknown-linux-gnu)
#   --app-root D  directory holding host.json and the function folders (default: the repository root)
#
# Honours CARGO_TARGET_DIR (default: <repo>/target). Writes the zip with Info-ZIP `zip` when it is installed,
# else with python3's zipfile (PACKAGE_ZIP_TOOL=python forces the latter). Needs python3 for the checks.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE=release
OUT="$ROOT/dist/kusto-ingest-api.zip"
APP_ROOT="$ROOT"
TARGET=""
CHECK_ONLY=""

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "package.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --debug) PROFILE=debug ;;
    --release) PROFILE=release ;;
    --out) [ $# -ge 2 ] || die "--out needs a path"; OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    --target) [ $# -ge 2 ] || die "--target needs a triple"; TARGET="$2"; shift ;;
    --target=*) TARGET="${1#--target=}" ;;
    --app-root) [ $# -ge 2 ] || die "--app-root needs a directory"; APP_ROOT="$2"; shift ;;
    --app-root=*) APP_ROOT="${1#--app-root=}" ;;
    --check) [ $# -ge 2 ] || die "--check needs a zip"; CHECK_ONLY="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

command -v python3 >/dev/null 2>&1 || die "python3 is required"

# Checks a package zip; prints its entries, or every problem and exits 1.
check_zip() {
  python3 - "$1" <<'PY'
import json, posixpath, stat, struct, sys, zipfile

path = sys.argv[1]
errors = []
try:
    z = zipfile.ZipFile(path)
except (OSError, zipfile.BadZipFile) as e:
    sys.exit(f"package check: {path}: not a readable zip: {e}")

infos = z.infolist()
names = [i.filename for i in infos]
by_name = {i.filename: i for i in infos}
if len(set(names)) != len(names):
    errors.append("duplicate entries")
for n in names:
    if n.startswith("/") or "\\" in n or ".." in n.split("/"):
        errors.append(f"unsafe entry path: {n}")
    if posixpath.basename(n.rstrip("/")) == "local.settings.json":
        errors.append(f"{n}: local settings must not be packaged")

def read_json(name):
    try:
        return json.loads(z.read(name))
    except KeyError:
        errors.append(f"{name} missing")
    except ValueError as e:
        errors.append(f"{name}: not JSON: {e}")
    return None

exe = None
host = read_json("host.json")
if isinstance(host, dict):
    exe = ((host.get("customHandler") or {}).get("description") or {}).get("defaultExecutablePath")
    if not isinstance(exe, str) or not exe:
        errors.append("host.json: customHandler.description.defaultExecutablePath is missing")
        exe = None
    else:
        exe = posixpath.normpath(exe.replace("\\", "/"))

functions = sorted(n for n in names if n.count("/") == 1 and n.endswith("/function.json"))
for required in ("Ingest/function.json", "BlobCreated/function.json"):
    if required not in names:
        errors.append(f"{required} missing")
for fn in functions:
    doc = read_json(fn)
    if isinstance(doc, dict) and not isinstance(doc.get("bindings"), list):
        errors.append(f"{fn}: no bindings array")

if exe is not None:
    info = by_name.get(exe)
    if info is None:
        errors.append(f"executable {exe} (host.json defaultExecutablePath) missing")
    else:
        mode = info.external_attr >> 16
        if info.create_system != 3:
            errors.append(f"{exe}: entry made on system {info.create_system}, not Unix, so no file mode")
        if not stat.S_ISREG(mode):
            errors.append(f"{exe}: not a regular file (mode {mode:o})")
        if mode & 0o777 != 0o755:
            errors.append(f"{exe}: mode {mode & 0o777:03o}, expected 755")
        head = z.read(exe)[:20]
        if head[:4] != b"\x7fELF" or len(head) < 20:
            errors.append(f"{exe}: not an ELF executable")
        elif head[4] != 2 or struct.unpack("<H", head[18:20])[0] != 0x3E:
            errors.append(f"{exe}: not an x86-64 ELF executable")

allowed = {"host.json"} | set(functions) | ({exe} if exe else set())
allowed |= {posixpath.dirname(f) + "/" for f in functions}
parent = posixpath.dirname(exe or "")
while parent:
    allowed.add(parent + "/")
    parent = posixpath.dirname(parent)
for n in names:
    if n not in allowed:
        errors.append(f"unexpected entry: {n}")

if errors:
    print(f"package check FAILED for {path}:", file=sys.stderr)
    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    sys.exit(1)
for i in infos:
    print(f"  {(i.external_attr >> 16) & 0o777:03o} {i.file_size:>10} {i.filename}")
print(f"package check OK: {path}")
PY
}

if [ -n "$CHECK_ONLY" ]; then
  check_zip "$CHECK_ONLY"
  exit 0
fi

# --- build ---------------------------------------------------------------------------------------
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
HOST_TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
if [ -z "$TARGET" ]; then
  if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    TARGET=x86_64-unknown-linux-musl
  elif [ "$HOST_TRIPLE" = x86_64-unknown-linux-gnu ]; then
    TARGET="$HOST_TRIPLE"
  else
    die "host is $HOST_TRIPLE: install the x86_64-unknown-linux-musl target (rustup target add x86_64-unknown-linux-musl) or pass --target"
  fi
fi
case "$TARGET" in
  x86_64-unknown-linux-*) ;;
  *) die "target $TARGET is not x86-64 Linux, which is what the Functions host runs" ;;
esac

cargo_args=(build --manifest-path "$ROOT/Cargo.toml" --bin handler)
[ "$PROFILE" = release ] && cargo_args+=(--release)
# Building for the host triple without --target keeps the shared target/<profile> directory (and its cache).
if [ "$TARGET" = "$HOST_TRIPLE" ]; then
  BIN="$TARGET_DIR/$PROFILE/handler"
else
  cargo_args+=(--target "$TARGET")
  BIN="$TARGET_DIR/$TARGET/$PROFILE/handler"
fi
echo "package.sh: cargo ${cargo_args[*]} (target $TARGET, CARGO_TARGET_DIR=$TARGET_DIR)" >&2
CARGO_TARGET_DIR="$TARGET_DIR" cargo "${cargo_args[@]}"
[ -f "$BIN" ] || die "build produced no $BIN"

if [ "$TARGET" = x86_64-unknown-linux-gnu ] && command -v objdump >/dev/null 2>&1; then
  glibc="$(objdump -T "$BIN" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1 || true)"
  [ -n "$glibc" ] && echo "package.sh: note: dynamically linked against glibc, needs $glibc or newer on the host" >&2
fi

# --- assemble ------------------------------------------------------------------------------------
[ -f "$APP_ROOT/host.json" ] || die "$APP_ROOT/host.json not found"
EXE="$(python3 - "$APP_ROOT/host.json" <<'PY'
import json, posixpath, sys
exe = json.load(open(sys.argv[1]))["customHandler"]["description"]["defaultExecutablePath"]
exe = posixpath.normpath(exe.replace("\\", "/"))
if not exe or exe.startswith("/") or ".." in exe.split("/"):
    sys.exit(f"defaultExecutablePath {exe!r} must be a relative path inside the app root")
print(exe)
PY
)" || die "cannot read customHandler.description.defaultExecutablePath from $APP_ROOT/host.json"

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
cp "$APP_ROOT/host.json" "$STAGE/host.json"
found=0
for fj in "$APP_ROOT"/*/function.json; do
  [ -f "$fj" ] || continue
  dir="$(basename "$(dirname "$fj")")"
  mkdir -p "$STAGE/$dir"
  cp "$fj" "$STAGE/$dir/function.json"
  found=$((found + 1))
done
[ "$found" -gt 0 ] || die "no <Function>/function.json under $APP_ROOT"
mkdir -p "$STAGE/$(dirname "$EXE")"
cp "$BIN" "$STAGE/$EXE"
chmod 0755 "$STAGE/$EXE"

mkdir -p "$(dirname "$OUT")"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
rm -f "$OUT"
if [ "${PACKAGE_ZIP_TOOL:-}" != python ] && command -v zip >/dev/null 2>&1; then
  (cd "$STAGE" && zip -q -X -r "$OUT" .)
else
  python3 - "$STAGE" "$OUT" <<'PY'
import os, stat, sys, zipfile
stage, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for dirpath, dirnames, filenames in os.walk(stage):
        dirnames.sort()
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            rel = os.path.relpath(full, stage).replace(os.sep, "/")
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | (os.stat(full).st_mode & 0o777)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(full, "rb") as fh:
                z.writestr(info, fh.read())
PY
fi

check_zip "$OUT"
