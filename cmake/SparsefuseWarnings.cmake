# Compiler flags for the sparsefuse CUDA objects. Deliberately no --use_fast_math, no
# -prec-div=false: the kernels rely on IEEE float32 division and subtraction (Voxelize).
function(sparsefuse_cuda_flags target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall --expt-relaxed-constexpr -prec-div=true -prec-sqrt=true -ftz=false>
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra>)
endfunction()
