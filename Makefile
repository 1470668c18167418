# quoin's build. Plain make, as Redis and LMDB do.
#
#   make            the server and tools, optimised, into build/
#   make run        install missing packages, build, start one member on the default ports
#   make test       install missing packages, build with ASan+UBSan into build-san/, run
#                   every unit test and every process-level test
#   make format     rewrite sources with clang-format; `make format-check` only checks
#
# Every source file under src/<layer>/ goes into one static library that the
# programs under cmd/<program>/ and the tests link. A layer may add rules (generated
# code, extra programs, long-running targets) in src/<layer>/module.mk or
# tests/<layer>/module.mk; those files are included below.
#
# MODE=release (default) builds into build/; MODE=san builds into build-san/ with
# sanitizers and QUOIN_TESTING defined, which compiles in the test-only fault
# switches and injection hooks. The server build can never carry them.

MODE ?= release
ifeq ($(MODE),san)
B := build-san
MODE_CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
               -fno-sanitize-recover=undefined -DQUOIN_TESTING
MODE_LDFLAGS := -fsanitize=address,undefined
else
B := build
MODE_CFLAGS := -O2 -g
MODE_LDFLAGS :=
endif

CC ?= cc
PKGS := libuv libnghttp2 libprotobuf-c lmdb yaml-0.1 openssl
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
          -Wmissing-prototypes -Isrc -I$(B)/gen $(MODE_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS := $(MODE_LDFLAGS) $(EXTRA_LDFLAGS)
LDLIBS = $(PKG_LIBS) -lpthread -lm

# Filled in by module.mk files: generated C sources, and headers they produce
# (which every object must wait for).
GEN_SRCS :=
GEN_HDRS :=
# Programs the tests need besides the unit tests (built by unit-test-bins).
EXTRA_TEST_BINS :=

-include $(wildcard src/*/module.mk) $(wildcard tests/*/module.mk)

# Generated files are kept: make would otherwise delete them as intermediate.
.SECONDARY: $(GEN_SRCS) $(GEN_HDRS)

LIB_SRCS := $(wildcard src/*/*.c) $(GEN_SRCS)
LIB_OBJS := $(patsubst %.c,$(B)/obj/%.o,$(LIB_SRCS:$(B)/gen/%=gen/%))
CORE_LIB := $(B)/libquoin-core.a

PROGRAMS := $(notdir $(wildcard cmd/*))
PROGRAM_BINS := $(addprefix $(B)/,$(PROGRAMS))

# Unit tests: tests/<layer>/test_*.c is one executable each; the other .c files in
# the same folder are helpers linked into every test of that folder.
UNIT_TEST_SRCS := $(wildcard tests/*/test_*.c)
UNIT_TEST_BINS := $(patsubst tests/%.c,$(B)/tests/%,$(UNIT_TEST_SRCS))

.PHONY: all run test unit-tests py-tests deps format format-check clean
.DEFAULT_GOAL := all

all: $(PROGRAM_BINS)

$(B)/obj/gen/%.o: $(B)/gen/%.c | $(GEN_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@

$(B)/obj/%.o: %.c | $(GEN_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@

$(CORE_LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

define program_rule
$(B)/$(1): $(patsubst %.c,$(B)/obj/%.o,$(wildcard cmd/$(1)/*.c)) $(CORE_LIB)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(foreach p,$(PROGRAMS),$(eval $(call program_rule,$(p))))

define unit_test_rule
$(B)/tests/$(1)/$(2): $(B)/obj/tests/$(1)/$(2).o \
    $(patsubst %.c,$(B)/obj/%.o,$(filter-out tests/$(1)/test_% tests/$(1)/bench_%,$(wildcard tests/$(1)/*.c))) \
    $(CORE_LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS) -lcmocka
endef
$(foreach t,$(UNIT_TEST_SRCS),$(eval $(call unit_test_rule,$(word 2,$(subst /, ,$(t))),$(basename $(notdir $(t))))))

deps:
	@sh scripts/deps.sh

run:
	@sh scripts/deps.sh --runtime
	@$(MAKE) --no-print-directory MODE=release all
	./build/quoin $(ARGS)

# The whole suite, as CI runs it: format, sanitizer build, unit tests, then the
# process-level tests against the sanitizer build of the server.
test:
	@sh scripts/deps.sh
	@$(MAKE) --no-print-directory format-check
	@$(MAKE) --no-print-directory MODE=san all unit-test-bins
	@$(MAKE) --no-print-directory MODE=release all
	@sh scripts/run-unit-tests.sh build-san/tests
	QUOIN_BIN=$(CURDIR)/build-san/quoin /usr/bin/python3 -m pytest -q tests

.PHONY: unit-test-bins
unit-test-bins: $(UNIT_TEST_BINS) $(EXTRA_TEST_BINS)

format:
	clang-format -i $(shell git ls-files --cached --others --exclude-standard '*.c' '*.h')

format-check:
	@clang-format --dry-run --Werror $(shell git ls-files --cached --others --exclude-standard '*.c' '*.h') \
	  || { echo "format-check: run 'make format'" >&2; exit 1; }

clean:
	rm -rf build build-san

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)
