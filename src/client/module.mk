# client: libquoin as a shared and a static library of its own (the client
# objects, the generated protobuf code and util), its installed header and a
# pkg-config file. `make libquoin` builds them; `make install-client
# PREFIX=/usr/local` installs them.
CLIENT_OBJS := $(patsubst %.c,$(B)/obj/%.o,$(wildcard src/client/*.c) src/util/util.c) \
               $(patsubst $(B)/gen/%.c,$(B)/obj/gen/%.o,$(API_GEN_C))
CLIENT_PC_LIBS := libuv libnghttp2 libprotobuf-c
PREFIX ?= /usr/local

.PHONY: libquoin install-client FORCE
libquoin: $(B)/libquoin.so $(B)/libquoin.a $(B)/quoin.pc

# The objects are not compiled with -fPIC for the core library; the shared
# library gets its own PIC copies.
$(B)/pic/%.o: %.c | $(GEN_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -fPIC -c $< -o $@

$(B)/pic/gen/%.o: $(B)/gen/%.c | $(GEN_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -fPIC -c $< -o $@

CLIENT_PIC_OBJS := $(patsubst $(B)/obj/%,$(B)/pic/%,$(CLIENT_OBJS))

$(B)/libquoin.so: $(CLIENT_PIC_OBJS) src/client/libquoin.map
	$(CC) $(LDFLAGS) -shared -Wl,-soname,libquoin.so.0 -Wl,--version-script=src/client/libquoin.map -o $@ $(CLIENT_PIC_OBJS) $(shell pkg-config --libs $(CLIENT_PC_LIBS)) -lpthread

$(B)/libquoin.a: $(CLIENT_OBJS)
	rm -f $@
	ar rcs $@ $^

# Rewritten on each build so that it carries the PREFIX given.
$(B)/quoin.pc: FORCE
	@mkdir -p $(dir $@)
	printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: quoin\nDescription: C client of the etcd v3 API (quoin, etcd)\nVersion: 0.1.0\nRequires.private: %s\nLibs: -L$${libdir} -lquoin\nLibs.private: -lpthread\nCflags: -I$${includedir}\n' \
	  '$(PREFIX)' '$(CLIENT_PC_LIBS)' > $@

install-client: libquoin
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/quoin $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(B)/libquoin.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(B)/libquoin.so $(DESTDIR)$(PREFIX)/lib/libquoin.so.0
	ln -sf libquoin.so.0 $(DESTDIR)$(PREFIX)/lib/libquoin.so
	install -m 644 src/client/quoin.h $(DESTDIR)$(PREFIX)/include/quoin/quoin.h
	install -m 644 $(B)/quoin.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/quoin.pc

# Examples (examples/*.c): each a program linked with the core library, built
# with `all` so that their tests (tests/client/test_examples.py) find them.
EXAMPLE_BINS := $(patsubst examples/%.c,$(B)/examples/%,$(wildcard examples/*.c))
all: $(EXAMPLE_BINS)

$(B)/examples/%: $(B)/obj/examples/%.o $(B)/libquoin-core.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
