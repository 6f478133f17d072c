# tapdiskd: build and install.
#
#   make build                                  swift build -c release
#   make install [PREFIX=/usr/local] [DESTDIR=]  binaries (tapdiskd, tapdisk-exporter), man page,
#                                               systemd units, example config
#   make uninstall [PREFIX=/usr/local] [DESTDIR=]
#   make test                                   scripts/test.sh (debug build and swift test)
#
# The units are installed to $(DESTDIR)/lib/systemd/system whatever PREFIX is (systemd looks
# there); their ExecStart names $(PREFIX)/bin/tapdiskd (or tapdisk-exporter). `make install` builds
# the release binaries first only if they do not exist yet.

PREFIX  ?= /usr/local
DESTDIR ?=
SWIFT   ?= swift

BINDIR   = $(PREFIX)/bin
MANDIR   = $(PREFIX)/share/man/man8
UNITDIR  = /lib/systemd/system
CONFDIR  = /etc/tapdisk
BINARY   = .build/release/tapdiskd
EXPORTER = .build/release/tapdisk-exporter

INSTALL  ?= install

.PHONY: all build install uninstall test

all: build

build:
	$(SWIFT) build -c release

$(BINARY) $(EXPORTER):
	$(SWIFT) build -c release

install: $(BINARY) $(EXPORTER)
	$(INSTALL) -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR)
	$(INSTALL) -m 0755 $(BINARY) $(DESTDIR)$(BINDIR)/tapdiskd
	$(INSTALL) -m 0755 $(EXPORTER) $(DESTDIR)$(BINDIR)/tapdisk-exporter
	gzip -9n < man/tapdiskd.8 > $(DESTDIR)$(MANDIR)/tapdiskd.8.gz
	chmod 0644 $(DESTDIR)$(MANDIR)/tapdiskd.8.gz
	for unit in tapdiskd@.service tapdiskd-vhost@.service; do \
		sed 's|^ExecStart=/usr/local/bin/tapdiskd |ExecStart=$(BINDIR)/tapdiskd |' systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$unit && \
		grep -q '^ExecStart=$(BINDIR)/tapdiskd ' $(DESTDIR)$(UNITDIR)/$$unit || exit 1; \
	done
	sed 's|^ExecStart=/usr/local/bin/tapdisk-exporter |ExecStart=$(BINDIR)/tapdisk-exporter |' \
		systemd/tapdisk-exporter.service > $(DESTDIR)$(UNITDIR)/tapdisk-exporter.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/tapdisk-exporter.service
	grep -q '^ExecStart=$(BINDIR)/tapdisk-exporter ' $(DESTDIR)$(UNITDIR)/tapdisk-exporter.service
	$(INSTALL) -m 0644 systemd/tapdiskd@.socket $(DESTDIR)$(UNITDIR)/tapdiskd@.socket
	$(INSTALL) -m 0644 systemd/example.conf $(DESTDIR)$(CONFDIR)/example.conf.sample
	@echo "installed; on a live system run: systemctl daemon-reload"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/tapdiskd $(DESTDIR)$(BINDIR)/tapdisk-exporter
	rm -f $(DESTDIR)$(MANDIR)/tapdiskd.8.gz
	rm -f $(DESTDIR)$(UNITDIR)/tapdiskd@.service $(DESTDIR)$(UNITDIR)/tapdiskd@.socket
	rm -f $(DESTDIR)$(UNITDIR)/tapdiskd-vhost@.service $(DESTDIR)$(UNITDIR)/tapdisk-exporter.service
	rm -f $(DESTDIR)$(CONFDIR)/example.conf.sample
	rmdir $(DESTDIR)$(CONFDIR) 2>/dev/null || true

test:
	scripts/test.sh
