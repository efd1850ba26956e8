# Thin wrapper over CMake: `make` builds, `make test` runs the tests, `make bench` runs the benchmarks.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all configure test bench fuzz clean
all: configure
	cmake --build $(BUILD) -j $(JOBS)

configure:
	@test -f $(BUILD)/CMakeCache.txt || cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

# Runs every ctest label this machine can run; GPU/MPI tests skip themselves with a message.
test: all
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The readers of untrusted files under ASan + UBSan (clang, build-fuzz/): their tests, then each
# libFuzzer target for a minute (scripts/fuzz_check.sh; CI runs it after the tests).
fuzz:
	./scripts/fuzz_check.sh

bench: all
	$(BUILD)/bench/sd_bench_cpu --benchmark_counters_tabular=true

clean:
	rm -rf $(BUILD)
