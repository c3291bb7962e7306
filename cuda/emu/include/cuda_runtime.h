// Emulation stand-in for <cuda_runtime.h> (cuda/emu/include is first on the include path).
#pragma once
#include "../emu.cuh"
