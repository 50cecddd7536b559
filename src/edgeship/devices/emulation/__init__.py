"""An emulated aarch64 device: qemu-user runs an aarch64 CPython with aarch64 wheels of the host's
runtimes, so the ARM kernels (qnnpack, XNNPACK's and ONNX Runtime's NEON paths) answer for real
on an x86 machine. It proves answers, never speed: qemu translates every instruction."""
