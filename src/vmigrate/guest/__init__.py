"""The guest: a Debian cloud kernel, a busybox initramfs and our static agent (agent.c).

`build.build_image()` builds it (from the Debian packages of `debian`, with `kernel_modules`,
`elf` and `initramfs`) and caches it (`cache`); `image.GuestImage` is what QEMU boots, and
`cmdline` the kernel command line that configures it; `agent_client` talks to the running agent.
"""
