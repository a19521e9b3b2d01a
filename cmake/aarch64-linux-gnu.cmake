# Cross build for aarch64 (Debian's gcc-aarch64-linux-gnu); binaries run under qemu-aarch64-static.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
# on Debian's arm64 multiarch libc (libc6:arm64): with the cross toolchain's (-L /usr/aarch64-linux-gnu)
# qemu 7.2 hangs in pthread_create
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static)
# Debian's arm64 multiarch packages (libjansson-dev:arm64, libdeflate-dev:arm64, zlib1g-dev:arm64,
# libsleef-dev:arm64): pkg-config looks at their .pc files only, never the host's.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")
