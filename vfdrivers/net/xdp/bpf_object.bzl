"""Builds an XDP/BPF C program with Debian's clang (-target bpf) and embeds the object file in
a C++ library as `const unsigned char <symbol>[]` / `const size_t <symbol>Size` in `namespace`,
declared by `header` (a header of the calling package, listing its objects), so that a loader
needs no file at run time (libbpf: bpf_object__open_mem). The defaults are this directory's
(xdp_objects.h, vfdrivers::net::xdp); another package passes its own.
Headers: linux-libc-dev (linux/bpf.h) and libbpf-dev (bpf/bpf_helpers.h)."""

def bpf_object(
        name,
        src,
        symbol,
        hdrs = [],
        header = "xdp_objects.h",
        namespace = "vfdrivers::net::xdp",
        visibility = None):
    obj = name + ".o"
    native.genrule(
        name = name + "_compile",
        srcs = [src] + hdrs,
        outs = [obj],
        # -g: libbpf needs the BTF of BTF-defined maps. The multiarch dir holds asm/types.h.
        cmd = "clang -O2 -g -Wall -Werror -target bpf " +
              "-I/usr/include/$$(uname -m)-linux-gnu -c $(location %s) -o $@" % src,
    )
    native.genrule(
        name = name + "_embed",
        srcs = [obj],
        outs = [name + "_embed.cc"],
        cmd = "{ echo '#include <cstddef>'; " +
              "echo '#include \"%s/%s\"'; " % (native.package_name(), header) +
              "echo 'namespace %s {'; " % namespace +
              "echo 'alignas(8) extern const unsigned char %s[] = {'; " % symbol +
              "od -An -v -tx1 $< | sed -e 's/ \\([0-9a-f][0-9a-f]\\)/0x\\1,/g'; " +
              "echo '};'; " +
              "echo 'extern const size_t %sSize = sizeof(%s);'; " % (symbol, symbol) +
              "echo '}  // namespace %s'; } > $@" % namespace,
    )
    native.cc_library(
        name = name,
        srcs = [name + "_embed.cc"],
        hdrs = [header],
        visibility = visibility,
    )
