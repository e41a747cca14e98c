# lmcd: one Makefile, explicit module folders, pkg-config for every library.
#
#   make            build/lmcd, build/lmcd-cli, build/liblmcd.a
#   make run        build and start lmcd on its embedded default
#   make test       build and run every test; last line "N passed, N failed, N skipped"
#   make test SAN=1       the same under AddressSanitizer + UBSan (build-asan/)
#   make test SAN=thread  the same under ThreadSanitizer (build-tsan/)
#   make fuzz       libFuzzer targets (clang), FUZZ_SECONDS each (default 600)
#   make bench      benchmarks, printed as ratios against same-run baselines
#
# Source files are found by folder (src/<module>/*.c), so a new file in an
# existing module needs no Makefile change.

SAN ?=
CC ?= cc
ifeq ($(SAN),)
BUILD := build
SANFLAGS :=
else ifeq ($(SAN),thread)
BUILD := build-tsan
SANFLAGS := -fsanitize=thread
# Lets Criterion's sandbox find free addresses in TSan's memory layout.
UNIT_SHIM := tests/tsan/criterion_arena.c
else
BUILD := build-asan
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined
endif

PKGS := libzmq jansson libmicrohttpd hiredis libxxhash msgpack
# A plain `make` installs the build set only; the goals that run tests,
# benchmarks or fuzzers add theirs (mk/deps.sh names each set).
DEPS_SETS := build $(if $(filter test unit e2e bench,$(MAKECMDGOALS)),test) \
	$(if $(filter fuzz,$(MAKECMDGOALS)),fuzz)
DEPS_OK := $(shell sh mk/deps.sh $(DEPS_SETS) >&2 && echo ok)
ifneq ($(DEPS_OK),ok)
$(error mk/deps.sh could not install the packages of: $(DEPS_SETS))
endif
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS := $(shell pkg-config --libs $(PKGS))

OPT ?= -O2
CFLAGS := -std=gnu11 -D_GNU_SOURCE $(OPT) -g -fno-omit-frame-pointer -Wall -Wextra -Werror \
	-Wshadow -Wstrict-prototypes -Wmissing-prototypes -pthread \
	-Isrc -Iinclude $(PKG_CFLAGS) $(SANFLAGS) $(EXTRA_CFLAGS)
LDFLAGS := -pthread $(SANFLAGS) $(EXTRA_LDFLAGS)
LDLIBS := $(PKG_LIBS) -lm

# Module folders in include order: each may include only folders to its right.
SERVER_MODULES := server http plugin engine wire l2 l1 metrics util
LIB_SRCS := $(foreach m,$(filter-out server,$(SERVER_MODULES)),$(wildcard src/$(m)/*.c)) \
	$(filter-out src/server/main.c,$(wildcard src/server/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)

CLIENT_SRCS := $(wildcard src/client/client*.c) $(wildcard src/wire/*.c) $(wildcard src/util/*.c)
CLIENT_OBJS := $(CLIENT_SRCS:%.c=$(BUILD)/obj/%.o)

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all run test unit e2e fuzz bench clean deps
# The binaries are built once their entry files exist (modules land one by one).
ALL := $(BUILD)/libserver.a $(BUILD)/liblmcd.a \
	$(if $(wildcard src/server/main.c),$(BUILD)/lmcd) \
	$(if $(wildcard src/client/cli.c),$(BUILD)/lmcd-cli) \
	$(BUILD)/lmcd-plugin-guard
all: $(ALL)

# The runtime-plugin guard lmcd execs beside each plugin (src/plugin/plugin_guard.c):
# that one file, libc only, so it starts at once; it lives next to lmcd.
$(BUILD)/lmcd-plugin-guard: src/plugin/plugin_guard.c src/plugin/plugin_int.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DPLUGIN_GUARD_MAIN -o $@ $< $(LDFLAGS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# The dashboard page, embedded as a C array (src/http/http.c serves it).
GEN_OBJS := $(BUILD)/obj/gen/dashboard_html.o
$(BUILD)/gen/dashboard_html.c: src/http/dashboard.html mk/embed.sh
	@mkdir -p $(dir $@)
	sh mk/embed.sh src/http/dashboard.html lmcd_dashboard_html > $@.tmp && mv $@.tmp $@
$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libserver.a: $(LIB_OBJS) $(GEN_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/liblmcd.a: $(sort $(CLIENT_OBJS))
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/lmcd: $(BUILD)/obj/src/server/main.o $(BUILD)/libserver.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

CLI_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard src/client/cli.c src/client/cli_*.c))
$(BUILD)/lmcd-cli: $(CLI_OBJS) $(BUILD)/liblmcd.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(UNIT_SHIM) $(BUILD)/libserver.a $(BUILD)/liblmcd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(UNIT_SHIM) $(BUILD)/libserver.a $(BUILD)/liblmcd.a \
		$(LDFLAGS) $(LDLIBS) $(shell pkg-config --libs criterion)

run: all
	./$(BUILD)/lmcd --runtime-plugin-locations examples/mp_runtime_plugins

unit: all $(UNIT_BINS)
e2e: all

test: all $(UNIT_BINS)
	@LMCD_BUILD=$(BUILD) SAN=$(SAN) sh tests/run.sh

fuzz:
	$(MAKE) -f tests/fuzz/fuzz.mk

bench: all
	@$(MAKE) -s -f bench/bench.mk BUILD=$(BUILD)

clean:
	rm -rf build build-asan build-tsan build-fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
