"""The library as a program links it: exactly the header's functions exported from libwiden.so, and
the version the header, the build and the library itself state."""
import ctypes
import os
import re
import subprocess

import pytest

import reference

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


PROGRAM = r"""
#include <stdio.h>
#include <widen/widen.h>
int main(int argc, char **argv) {
    widen_checkpoint *c; widen_error err;
    if (widen_open(argv[1], &c, &err) != WIDEN_OK) { fprintf(stderr, "%s\n", err.message); return 1; }
    const widen_tensor_info *t = widen_tensor_at(c, 0);
    printf("%u %zu %s %d\n", widen_version_number(), widen_tensor_count(c), t->name, t->rank);
    widen_close(c);
    return argc == 2 ? 0 : 2;
}
"""


@pytest.mark.skipif(bool(os.environ.get("WIDEN_SANITIZE")), reason="installs the release build")
def test_installed_library_builds_a_program_with_pkg_config_and_cmake(tmp_path):
    """cmake --install into a prefix; a ten-line program compiled with `pkg-config --cflags --libs
    widen` and with find_package(widen), each run against the installed libwiden.so; man widen."""
    build = os.path.dirname(LIBWIDEN)
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", build, "--prefix", prefix], check=True, capture_output=True)
    src = tmp_path / "main.c"
    src.write_text(PROGRAM)
    model = os.path.join(ROOT, "examples", "classic_rgb.safetensors")
    meta, tensors = reference.load(model)[:2]
    first = reference.write_order(tensors)[0]
    want = f"{ctypes.CDLL(LIBWIDEN).widen_version_number()} {len(tensors)} {first} {tensors[first][1].ndim}"
    libdir = next(prefix.rglob("widen.pc")).parent.parent  # lib, or lib/<multiarch>, as GNUInstallDirs chose
    env = dict(os.environ, PKG_CONFIG_PATH=str(libdir / "pkgconfig"), LD_LIBRARY_PATH=str(libdir))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "widen"], env=env, check=True, capture_output=True,
                           text=True).stdout.split()
    subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", src, "-o", tmp_path / "with_pc", *flags], check=True)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.c").write_text(PROGRAM)
    (tmp_path / "app" / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.22)\nproject(app C)\nfind_package(widen 0.1 REQUIRED)\n"
        "add_executable(app main.c)\ntarget_link_libraries(app PRIVATE widen::widen)\n")
    subprocess.run(["cmake", "-S", tmp_path / "app", "-B", tmp_path / "app-build", f"-DCMAKE_PREFIX_PATH={prefix}"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", tmp_path / "app-build"], check=True, capture_output=True)
    for exe in (tmp_path / "with_pc", tmp_path / "app-build" / "app"):
        out = subprocess.run([exe, model], env=env, check=True, capture_output=True, text=True).stdout.strip()
        assert out == want, (exe, out, want)
        libs = subprocess.run(["ldd", exe], env=env, capture_output=True, text=True).stdout
        assert str(libdir / "libwiden.so.0") in libs, libs
    page = subprocess.run(["man", "-P", "cat", "widen"], env=dict(env, MANPATH=str(prefix / "share" / "man")),
                          capture_output=True, text=True, check=True).stdout
    help_text = subprocess.run([prefix / "bin" / "widen", "--help"], capture_output=True, text=True).stdout
    assert "widen - widen the input channels" in page
    for command in ("inspect", "apply", "verify", "hash"):  # the page is the program's own help
        assert command in page and command in help_text
