#!/usr/bin/env bash
# Builds libcublas.so.12 / libcublasLt.so.12 forwarding to CUDA 13's libcublas.so.13, in directory $1.
#
# Why: PyPI's faiss-gpu wheel (faiss-gpu-cu12) links CUDA 12's cuBLAS, and the GPU machine this project
# was measured on has only CUDA 13 (its PyTorch is cu130), with no room to carry CUDA 12's 600 MB cuBLAS.
# faiss calls eight cuBLAS functions whose signatures are the same in 12 and 13; each shim symbol carries
# the version tag "libcublas.so.12" that faiss asks for and jumps to the CUDA 13 function. On a machine
# with a matching CUDA 12 (or a faiss-gpu built for CUDA 13) none of this is needed.
set -euo pipefail
out=${1:?output directory}
target=${2:?path of libcublas.so.13}
mkdir -p "$out"
funcs=(cublasCreate_v2 cublasDestroy_v2 cublasGemmEx cublasGemmStridedBatchedEx cublasGetMathMode
       cublasSetMathMode cublasSetStream_v2 cublasSgemmEx)
{
  echo '#define _GNU_SOURCE'
  echo '#include <dlfcn.h>'
  echo '#include <stdio.h>'
  echo "__attribute__((visibility(\"hidden\"))) void *mms_ptrs[${#funcs[@]}];"
  echo "static const char *names[] = {$(printf '"%s",' "${funcs[@]}")};"
  echo '__attribute__((constructor)) static void mms_init(void) {'
  echo "  void *h = dlopen(\"$target\", RTLD_NOW | RTLD_GLOBAL);"
  echo '  if (!h) { fprintf(stderr, "cublas12 shim: %s\n", dlerror()); return; }'
  echo "  for (int i = 0; i < ${#funcs[@]}; i++) {"
  echo '    mms_ptrs[i] = dlsym(h, names[i]);'
  echo '    if (!mms_ptrs[i]) fprintf(stderr, "cublas12 shim: missing %s\n", names[i]);'
  echo '  }'
  echo '}'
  i=0
  for f in "${funcs[@]}"; do
    echo "__asm__(\".globl $f\n.type $f,@function\n$f:\n  jmp *mms_ptrs+$((i * 8))(%rip)\n\");"
    i=$((i + 1))
  done
} > "$out/shim.c"
printf 'libcublas.so.12 { global: %s local: *; };\n' "$(printf '%s; ' "${funcs[@]}")" > "$out/shim.map"
cc -O2 -shared -fPIC -o "$out/libcublas.so.12" "$out/shim.c" -Wl,-soname,libcublas.so.12 \
   -Wl,--version-script="$out/shim.map" -ldl
echo 'void mms_cublaslt_placeholder(void) {}' > "$out/lt.c"
cc -O2 -shared -fPIC -o "$out/libcublasLt.so.12" "$out/lt.c" -Wl,-soname,libcublasLt.so.12
echo "built $out/libcublas.so.12 -> $target"
