"""The library as a program links it: exactly the header's functions exported from libwiden.so, and
the version the header, the build and the library itself state."""
import ctypes
import os
import re
import subprocess

import pytest

import reference

from reference import LIBWIDEN, ROOT

pytestmark = pytest.mark.host_only("this build's libwiden.so itself: its symbols, version, headers, pkg-config and CMake files")

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


NULL_CALLS = [  # (function, argtypes, restype, args, expected result); P = a pointer argument given NULL
    ("widen_open", "PPP", ctypes.c_int, (None, None, None), 2),
    ("widen_open", "SPP", ctypes.c_int, (b"x.safetensors", None, None), 2),
    ("widen_open_with", "PPPP", ctypes.c_int, (None, None, None, None), 2),
    ("widen_open_with", "SPPP", ctypes.c_int, (b"x.safetensors", None, None, None), 2),
    ("widen_open_options_init", "PZ", None, (None, 64), None),
    ("widen_close", "P", None, (None,), None),
    ("widen_checkpoint_path", "P", ctypes.c_char_p, (None,), None),
    ("widen_checkpoint_format", "P", ctypes.c_char_p, (None,), None),
    ("widen_checkpoint_size", "P", ctypes.c_uint64, (None,), 0),
    ("widen_tensor_count", "P", ctypes.c_size_t, (None,), 0),
    ("widen_tensor_at", "PZ", ctypes.c_void_p, (None, 0), None),
    ("widen_tensor_find", "PS", ctypes.c_long, (None, b"x"), -1),
    ("widen_tensor_storage", "PZ", ctypes.c_char_p, (None, 0), None),
    ("widen_tensor_strided", "PZ", ctypes.c_int, (None, 0), 0),
    ("widen_metadata_count", "P", ctypes.c_size_t, (None,), 0),
    ("widen_tensor_data", "PZPPP", ctypes.c_int, (None, 0, None, None, None), 2),
    ("widen_tensor_read", "PZPQP", ctypes.c_int, (None, 0, None, 0, None), 2),
    ("widen_metadata_at", "PZPP", None, (None, 0, None, None), None),
    ("widen_hash_checkpoint", "PPPPP", ctypes.c_int, (None, None, None, None, None), 2),
    ("widen_hash_options_init", "PZ", None, (None, 64), None),
    ("widen_verify_options_init", "PZ", None, (None, 64), None),
    ("widen_verify_report_init", "PZ", None, (None, 64), None),
    ("widen_hash_bytes_len", None, None, None, None),
    ("widen_hash128_hex", None, None, None, None),
    ("widen_escape_text", "PPZ", ctypes.c_size_t, (None, None, 0), 0),
    ("widen_dtype_from_name", "PP", ctypes.c_int, (None, None), -1),
    ("widen_remap", "PiP", ctypes.c_int, (None, 0, None), 2),
    ("widen_cast", "iiPPZiP", ctypes.c_int, (0, 0, None, None, 4, 0, None), 2),
    ("widen_parse_map", "PPPP", ctypes.c_int, (None, None, None, None), 2),
    ("widen_parse_init", "PPP", ctypes.c_int, (None, None, None), 2),
    ("widen_widen_map", "IIIPPP", ctypes.c_int, (3, 4, 3, None, None, None), 2),
    ("widen_transform_free", "P", None, (None,), None),
    ("widen_transform_add_map", "PSiPZP", ctypes.c_int, (None, b"x", 1, None, 0, None), 2),
    ("widen_transform_set_cast", "PiP", ctypes.c_int, (None, 0, None), 2),
    ("widen_transform_to_json", "P", ctypes.c_void_p, (None,), None),
    ("widen_transform_from_json", "PPP", ctypes.c_int, (None, None, None), 2),
    ("widen_find_candidates", "PiQPZ", ctypes.c_size_t, (None, 1, 3, None, 4), 0),
    ("widen_apply_options_init", "PZ", None, (None, 64), None),
    ("widen_apply", "PPPPP", ctypes.c_int, (None, None, None, None, None), 2),
    ("widen_apply_checkpoint", "PPPPP", ctypes.c_int, (None, None, None, None, None), 2),
    ("widen_apply_to_fd", "PiPPPP", ctypes.c_int, (None, 1, None, None, None, None), 2),
    ("widen_verify", "PPPPP", ctypes.c_int, (None, None, None, None, None), 2),
    ("widen_model_open", "PPP", ctypes.c_int, (None, None, None), 2),
    ("widen_model_open_with", "PPPP", ctypes.c_int, (None, None, None, None), 2),
    ("widen_model_open_with", "SPPP", ctypes.c_int, (b"x.safetensors", None, None, None), 2),
    ("widen_model_close", "P", None, (None,), None),
    ("widen_model_is_folder", "P", ctypes.c_int, (None,), 0),
    ("widen_model_file_count", "P", ctypes.c_size_t, (None,), 0),
    ("widen_model_file", "PZ", ctypes.c_void_p, (None, 0), None),
    ("widen_model_file_name", "PZ", ctypes.c_char_p, (None, 0), None),
    ("widen_model_size", "P", ctypes.c_uint64, (None,), 0),
    ("widen_model_tensor_count", "P", ctypes.c_size_t, (None,), 0),
    ("widen_model_tensor_name", "PZ", ctypes.c_char_p, (None, 0), None),
    ("widen_model_tensor_at", "PZP", ctypes.c_void_p, (None, 0, None), None),
    ("widen_model_tensor_find", "PS", ctypes.c_long, (None, b"x"), -1),
    ("widen_model_find_candidates", "PiQPZ", ctypes.c_size_t, (None, 1, 3, None, 4), 0),
    ("widen_model_left_out_count", "P", ctypes.c_size_t, (None,), 0),
    ("widen_model_left_out", "PZ", ctypes.c_char_p, (None, 0), None),
    ("widen_model_channel_note_count", "P", ctypes.c_size_t, (None,), 0),
    ("widen_model_channel_note", "PZ", ctypes.c_char_p, (None, 0), None),
    ("widen_model_apply", "PPPPP", ctypes.c_int, (None, None, None, None, None), 2),
    ("widen_model_verify", "PPPPP", ctypes.c_int, (None, None, None, None, None), 2),
]
TYPES = {"P": ctypes.c_void_p, "S": ctypes.c_char_p, "Z": ctypes.c_size_t, "i": ctypes.c_int, "I": ctypes.c_uint32,
         "Q": ctypes.c_uint64}

CALLER = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
name, argtypes, restype, args = eval(sys.argv[2])
if name == "widen_hash_bytes_len":  # the hash of nothing, from a NULL pointer
    class H(ctypes.Structure):
        _fields_ = [("high", ctypes.c_uint64), ("low", ctypes.c_uint64)]
    lib.widen_hash_bytes.restype = H
    a, b = lib.widen_hash_bytes(None, ctypes.c_size_t(0)), lib.widen_hash_bytes(b"", ctypes.c_size_t(0))
    print(repr((a.high, a.low) == (b.high, b.low)))
elif name == "widen_hash128_hex":
    lib.widen_hash128_hex(ctypes.c_uint64(1), ctypes.c_uint64(2), None)
    print("None")
else:
    f = getattr(lib, name)
    f.argtypes = [getattr(ctypes, t) for t in argtypes]
    f.restype = getattr(ctypes, restype) if restype else None
    r = f(*args)
    print(repr(r))
"""


@pytest.mark.parametrize("call", NULL_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(NULL_CALLS)])
def test_public_functions_take_null_pointers(call):
    """Every pointer argument NULL: the function returns WIDEN_EUSAGE (or nothing, 0, NULL, -1 for the
    accessors), never crashes. Each call runs in a process of its own, so that a crash is a failure
    that names the function."""
    import sys
    name, argtypes, restype, args, expected = call
    spec = (name, [TYPES[t].__name__ for t in argtypes] if argtypes else None,
            restype.__name__ if restype else None, args)
    proc = subprocess.run([sys.executable, "-c", CALLER, LIBWIDEN, repr(spec)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, (name, proc.returncode, proc.stderr[-500:])
    got = proc.stdout.strip()
    want = "True" if name == "widen_hash_bytes_len" else repr(expected)
    assert got == want, (name, got, want)


def c_string_literals(text):
    """(line, contents) of each string literal in C source text, comments and character constants
    skipped (so that a "--" in a comment, or '"' as a character, is not taken for one)."""
    i, line, n = 0, 1, len(text)
    while i < n:
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.index("*/", i + 2) + 2
            line += text.count("\n", i, end)
            i = end
        elif text[i] in "\"'":
            quote, j = text[i], i + 1
            while text[j] != quote:
                j += 2 if text[j] == "\\" else 1
            if quote == '"':
                yield line, text[i + 1:j]
            i = j + 1
        else:
            line += text[i] == "\n"
            i += 1


def test_library_messages_name_no_cli_flags():
    """The library is embedded by programs that have no --force: its messages name what an option is
    (the map, overwrite, a manifest), never a flag of the widen command, which adds its own flags to
    the lines it prints. Any "--" followed by a letter in a string literal of src/ is such a flag."""
    flags = []
    for folder, _, files in os.walk(os.path.join(ROOT, "src")):
        for name in sorted(files):
            if name.endswith((".c", ".h")):
                path = os.path.join(folder, name)
                for line, literal in c_string_literals(open(path, encoding="utf-8").read()):
                    if re.search(r"--[A-Za-z]", literal):
                        flags.append(f"{os.path.relpath(path, ROOT)}:{line}: \"{literal}\"")
    assert not flags, "library messages that name CLI flags:\n" + "\n".join(flags)


def test_string_literal_scan_sees_what_it_should():
    src = 'a = "--force"; /* "--no" */ // "--x"\nb = \'"\'; c = "x\\"--cast y";'
    assert list(c_string_literals(src)) == [(1, "--force"), (2, 'x\\"--cast y')]
