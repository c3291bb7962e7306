#pragma once
#include "device/device_radix_sort.cuh"
#include "device/device_scan.cuh"
