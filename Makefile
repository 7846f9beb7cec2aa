# The short commands; CMake is the source of truth.
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)

.PHONY: all build demo test test-asan deps clean format format-check install package bench

all: build

deps:
	@.ci/deps

build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

demo: deps build
	$(BUILD)/asynchost scripts/demo.lua

test: deps build
	spec/run $(BUILD)

test-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DAH_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)
	spec/run $(ASAN_BUILD)

.PHONY: test-valgrind
test-valgrind: deps
	spec/valgrind build-valgrind

install: build
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX),)

package: build
	cd $(BUILD) && cpack -G DEB

bench:
	bench/run

C_SOURCES = host/*.c host/*.h bindings/*.c bindings/*.h tests/*.c tests/*.h \
	examples/embed/*.c fuzz/*.c

format:
	clang-format -i $(C_SOURCES)

format-check:
	clang-format --dry-run -Werror $(C_SOURCES)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
