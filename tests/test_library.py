"""The library as a program links it: exactly the header's functions exported from libwiden.so, and
the version the header, the build and the library itself state."""
import ctypes
import os
import re
import subprocess

from reference import LIBWIDEN, ROOT

HEADER = os.path.join(ROOT, "include", "widen", "widen.h")


def header_functions():
    """Function names the public header declares (comments removed; a name followed by '(' at the
    start of a declaration, not a function-pointer typedef)."""
    text = open(HEADER).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    names = set()
    for decl in text.split(";"):
        decl = " ".join(decl.split())
        if decl.startswith(("typedef", "#")) or "{" in decl:
            decl = decl.rsplit("}", 1)[-1]
        m = re.search(r"\b(widen_[a-z0-9_]+)\s*\(", decl)
        if m and not re.search(r"\(\s*\*\s*widen_", decl) and not decl.lstrip().startswith("typedef"):
            names.add(m.group(1))
    return names


def test_exported_symbols_are_exactly_the_public_api():
    out = subprocess.run(["nm", "-D", "--defined-only", LIBWIDEN], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.split()[1] in "TDBRVWi"}
    declared = header_functions()
    assert len(declared) > 40
    assert exported == declared, (sorted(exported - declared), sorted(declared - exported))


def test_version_is_one_number_everywhere():
    text = open(HEADER).read()
    major, minor, patch = (int(re.search(rf"#define WIDEN_VERSION_{k} (\d+)", text).group(1))
                           for k in ("MAJOR", "MINOR", "PATCH"))
    assert re.search(r'#define WIDEN_VERSION_STRING "(.*)"', text).group(1) == f"{major}.{minor}.{patch}"
    project = re.search(r"project\(widen VERSION ([0-9.]+)", open(os.path.join(ROOT, "CMakeLists.txt")).read()).group(1)
    assert project == f"{major}.{minor}.{patch}"
    lib = ctypes.CDLL(LIBWIDEN)
    lib.widen_version_number.restype = ctypes.c_uint
    assert lib.widen_version_number() == major * 10000 + minor * 100 + patch
    soname = subprocess.run(["objdump", "-p", LIBWIDEN], capture_output=True, text=True, check=True).stdout
    assert f"SONAME               libwiden.so.{major}" in soname
