# chatd — plain, overridable Makefile.
#   make            build build/chatd
#   make test       install deps, build, run unit + integration tests
#   make test SAN=1 the same under ASan + UBSan (objects in build/san/)
#   make run        install deps, start local redis + postgres under .run/, run chatd --role=all
#   make cluster    the same stores, then broker + 2 classifiers + 2 gateways (:8080, :8081)
#   make clean

CC      ?= cc
PKGS    := libuv rdkafka hiredis libpq libcjson libjwt openssl
CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Werror -Wno-missing-field-initializers
CPPFLAGS += -I. -D_GNU_SOURCE $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lwslay -lhttp_parser -lm -lpthread

ifeq ($(SAN),1)
BUILD   := build/san
CFLAGS  += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
BUILD   := build
endif

SRCS    := $(wildcard lib/*.c conf/*.c net/*.c kafka/*.c store/*.c roles/*.c)
OBJS    := $(SRCS:%.c=$(BUILD)/%.o) $(BUILD)/gen/migrations.o $(BUILD)/gen/web_index.o
MIGRATIONS := $(sort $(wildcard store/migrations/*.sql))
UNIT_SRCS  := $(wildcard tests/unit/test_*.c)
UNIT_BINS  := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

PYTHON  := /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: all deps test unit integration run cluster clean bench
all: $(BUILD)/chatd

deps:
	@bash scripts/deps.sh

$(BUILD)/chatd: $(BUILD)/chatd.o $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -MMD -MP -c -o $@ $<

# SQL migrations are compiled into the binary so an image needs no data files.
$(BUILD)/gen/migrations.c: $(MIGRATIONS) scripts/embed-migrations.sh
	@mkdir -p $(dir $@)
	bash scripts/embed-migrations.sh $(MIGRATIONS) > $@

$(BUILD)/gen/migrations.o: $(BUILD)/gen/migrations.c
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# The browser page is compiled in too: index_html[] / index_html_len.
$(BUILD)/gen/web_index.c: web/index.html
	@mkdir -p $(dir $@)
	cd web && xxd -i index.html > $(abspath $@)

$(BUILD)/gen/web_index.o: $(BUILD)/gen/web_index.c
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: $(BUILD)/chatd
	CHATD_BIN=$(abspath $(BUILD)/chatd) $(PYTHON) -m pytest -q -x tests/integration $(PYTEST_ARGS)

test: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) integration

run: deps
	$(MAKE) all
	bash scripts/run-local.sh $(abspath $(BUILD)/chatd)

cluster: deps
	$(MAKE) all
	bash scripts/run-local.sh $(abspath $(BUILD)/chatd) cluster

clean:
	rm -rf build

-include $(OBJS:.o=.d) $(BUILD)/chatd.d
