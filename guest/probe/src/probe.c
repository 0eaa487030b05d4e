/*
 * probe: a freestanding x86-64 guest for testing thaw-vmm without a Linux
 * kernel. It runs with interrupts off, talks only through port I/O and
 * memory, and prints what it does on the 8250 serial port at 0x3f8, one
 * line per event, so tests can check it:
 *
 *   probe: boot cmdline="..."
 *   probe: ram <bytes>                 RAM in the e820 map
 *   probe: pattern pages=<n> sum=<hex> a pattern written and checksummed
 *   probe: tick <n> sum=<hex>          the pattern re-checksummed each tick
 *   probe: ws pages=<n> chunk=<c>      a working set written (probe.ws)
 *   probe: ws pass <n> ok              a full pass over it checked, or
 *   probe: ws pass <n> bad=<k> first=<page>  with k pages wrong
 *   probe: serial <hex>                a byte received on the serial port
 *   probe: key <hex>                   a byte from the i8042 keyboard
 *   probe: ctrl-alt-del                Ctrl+Alt+Del seen: reset at once
 *   probe: done                        then it resets through the i8042
 *
 * Command line parameters: probe.pages=<n> (pattern size, 4 KiB pages,
 * default 256), probe.ticks=<n> (ticks before reset; 0 runs forever),
 * probe.spin=<n> (loop iterations between ticks, default 100000),
 * probe.ws=<MiB> (a working set at 64 MiB that the loop re-checks
 * probe.ws.chunk=<n> pages per tick, default 256, so that a restored probe
 * keeps touching all of it; default none).
 * Virtio devices announced on the command line are driven by polling
 * (virtio.c, vsock.c): a block device is read (and with probe.blk.write=1
 * written; with probe.blk.every=<n> re-read every n ticks, printing
 * "probe: blk reread tick=<n> status=<s> sum=<hex>"), a vsock device
 * serves an echo port between ticks.
 * Misbehaviour, to prove a guest cannot crash or hang the VMM:
 * probe.chaos=<n> does n reads and writes of 1-8 bytes at pseudo-random
 * ports and unclaimed MMIO addresses, then prints "probe: chaos done";
 * probe.smp=<n> starts vCPUs 1..n-1 with INIT/SIPI and prints
 * "probe: smp started=<count>"; probe.high=1 maps RAM above 4 GiB, writes its first and last 8 bytes
 * and prints "probe: high ok top=<hex>"; probe.triple=1 triple-faults; probe.exits=<n> writes port 0x80 n times
 * between "probe: exits start" and "probe: exits done" (a benchmark of the
 * exit path); probe.hang=1 halts with interrupts off.
 * probe.idle=1 makes the probe idle between ticks: after each tick it
 * halts with interrupts off (a halted vCPU costs the host no CPU), and
 * each wake (thaw-vmm wakes such a vCPU when the machine is resumed, see
 * Machine.Resume) polls the serial port and keyboard and prints the next
 * tick. A restored idle probe therefore prints one tick when resumed and
 * one more for every pause and resume that proves it alive.
 * The counter and the pattern live in guest memory, so a snapshot restored
 * elsewhere continues counting from where it was.
 */
#include "probe.h"

#define COM1 0x3f8

void putc(char c)
{
	/* Wait for the transmit holding register to empty (LSR bit 5). */
	for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
		;
	outb(COM1, (u8)c);
}

void puts(const char *s) { while (*s) putc(*s++); }

void putdec(u64 v)
{
	char buf[21];
	int i = 20;
	buf[i] = 0;
	do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v);
	puts(&buf[i]);
}

void puthexn(u64 v, int digits)
{
	char buf[17];
	for (int i = digits - 1; i >= 0; i--) { buf[i] = "0123456789abcdef"[v & 15]; v >>= 4; }
	buf[digits] = 0;
	puts(buf);
}

void puthex(u64 v) { puthexn(v, 16); }

/* param returns the value of "name=<decimal>" in the command line, or def. */
u64 param(const char *cmdline, const char *name, u64 def)
{
	for (const char *p = cmdline; *p; p++) {
		if (p != cmdline && p[-1] != ' ')
			continue;
		const char *a = p, *b = name;
		while (*b && *a == *b) { a++; b++; }
		if (*b || *a != '=')
			continue;
		a++;
		u64 v = 0;
		while (*a >= '0' && *a <= '9') v = v * 10 + (u64)(*a++ - '0');
		return v;
	}
	return def;
}

/* memset and memcpy use the string instructions: one instruction for the
 * whole buffer, which matters when PVM emulates the guest instruction by
 * instruction. */
void *memset(void *d, int c, u64 n)
{
	void *ret = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return ret;
}

void *memcpy(void *d, const void *s, u64 n)
{
	void *ret = d;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return ret;
}

/* State that must survive a snapshot lives in .data/.bss: guest memory. */
static volatile u64 ticks;
#define PATTERN_BASE 0x2000000UL /* 32 MiB, above the probe image */

static u64 checksum(u64 pages)
{
	u64 sum = 0;
	volatile u64 *p = (volatile u64 *)PATTERN_BASE;
	for (u64 i = 0; i < pages * 512; i++)
		sum = (sum ^ p[i]) * 0x100000001b3UL;
	return sum;
}

/* The working set (probe.ws=<MiB>): pages at WS_BASE, each holding a
 * non-zero 64-bit value derived from its index in its first, middle and
 * last qword (zeros elsewhere), re-checked probe.ws.chunk pages per tick so
 * that it is touched continuously. A page served from the wrong file
 * offset or as zeros is caught. Only three qwords per
 * page, because under PVM the guest is emulated: filling or reading every
 * qword of hundreds of MiB would take minutes. */
#define WS_BASE 0x4000000UL /* 64 MiB, above the pattern */
static u64 ws_pages, ws_chunk, ws_next, ws_pass, ws_bad, ws_first_bad;

static u64 ws_value(u64 page) { return (page + 1) * 0x9e3779b97f4a7c15UL; }

static void ws_fill(void)
{
	for (u64 i = 0; i < ws_pages; i++) {
		volatile u64 *p = (volatile u64 *)(WS_BASE + i * 4096);
		u64 v = ws_value(i);
		p[0] = v;
		p[256] = v;
		p[511] = v;
	}
}

/* ws_check reports whether page i still holds its value. */
static int ws_check(u64 i)
{
	volatile u64 *p = (volatile u64 *)(WS_BASE + i * 4096);
	u64 v = ws_value(i);
	return p[0] == v && p[256] == v && p[511] == v;
}

/* ws_tick verifies the next chunk; at the end of a pass it prints
 * "probe: ws pass <n> ok" or "probe: ws pass <n> bad=<pages> first=<page>". */
static void ws_tick(void)
{
	for (u64 k = 0; k < ws_chunk && ws_pages; k++) {
		if (!ws_check(ws_next)) {
			if (!ws_bad)
				ws_first_bad = ws_next;
			ws_bad++;
		}
		if (++ws_next < ws_pages)
			continue;
		ws_pass++;
		puts("probe: ws pass ");
		putdec(ws_pass);
		if (ws_bad) {
			puts(" bad=");
			putdec(ws_bad);
			puts(" first=");
			putdec(ws_first_bad);
		} else {
			puts(" ok");
		}
		putc('\n');
		ws_next = 0;
		ws_bad = 0;
	}
}

/* chaos pokes at ports and MMIO addresses nothing claims (or that belong
 * to devices which must cope), skipping the i8042 (a reset would end the
 * run early), the serial port (output would be garbled) and the in-kernel
 * interrupt controllers, whose reprogramming could send the vCPU INIT. */
static void chaos(u64 n, u64 ram)
{
	u64 x = 0x2545f4914f6cdd1dUL;
	u64 sink = 0;
	for (u64 i = 0; i < n; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		u16 port = (u16)x;
		if ((port >= 0x60 && port <= 0x64) || (port >= 0x3f8 && port <= 0x3ff) ||
		    port == 0x20 || port == 0x21 || port == 0xa0 || port == 0xa1 || port == 0x4d0 || port == 0x4d1)
			continue;
		switch ((x >> 16) % 8) {
		case 0: outb(port, (u8)(x >> 24)); break;
		case 1: outw(port, (u16)(x >> 24)); break;
		case 2: outl(port, (u32)(x >> 24)); break;
		case 3: sink += inb(port); break;
		case 4: sink += inw(port); break;
		case 5: sink += inl(port); break;
		default: {
			/* Somewhere between the end of RAM and 3.75 GiB: no RAM, no
			 * APIC, so an MMIO exit to the VMM. */
			u64 addr = ram + 0x100000 + ((x >> 20) % (0xf0000000UL - ram - 0x100000));
			addr &= ~7UL;
			if ((x >> 40) & 1)
				*(volatile u64 *)addr = x;
			else
				sink += *(volatile u32 *)addr;
		}
		}
	}
	puts("probe: chaos done sink=");
	puthex(sink);
	putc('\n');
}

struct idtr { u16 limit; u64 base; } __attribute__((packed));

/* smp starts the application processors the way a kernel does, INIT then
 * two STARTUP IPIs through the local APIC, into a real-mode trampoline at
 * 0x8000 that counts itself at 0x8100 and halts; it prints how many came
 * up. The VMM's vCPU threads for the APs sit in KVM_RUN until the IPIs
 * arrive. */
static void smp(u64 ncpus)
{
	static const u8 tramp[] = {
		0xf0, 0xff, 0x06, 0x00, 0x81, /* lock inc word [0x8100] */
		0xfa, 0xf4,                   /* cli; hlt */
		0xeb, 0xfc,                   /* jmp back to hlt */
	};
	volatile u16 *count = (volatile u16 *)0x8100;
	memcpy((void *)0x8000, tramp, sizeof(tramp));
	*count = 0;
	volatile u32 *lapic = (volatile u32 *)0xfee00000UL;
	lapic[0xf0 / 4] |= 0x100; /* software-enable the local APIC */
	for (u64 cpu = 1; cpu < ncpus; cpu++) {
		lapic[0x310 / 4] = (u32)cpu << 24;
		lapic[0x300 / 4] = 0x4500; /* INIT, assert */
		for (volatile int i = 0; i < 1000; i++)
			;
		for (int sipi = 0; sipi < 2; sipi++) {
			lapic[0x310 / 4] = (u32)cpu << 24;
			lapic[0x300 / 4] = 0x4600 | (0x8000 >> 12); /* STARTUP, vector 0x08 */
			for (volatile int i = 0; i < 1000; i++)
				;
		}
	}
	for (u64 i = 0; i < 100000000 && *count < ncpus - 1; i++)
		;
	puts("probe: smp started=");
	putdec(*count);
	putc('\n');
}

/* Page directories mapping 4 GiB to 4 GiB + HIGH_PDS GiB; the VMM's boot
 * page tables map only the low 4 GiB. */
#define HIGH_PDS 8
static u64 high_pd[HIGH_PDS][512] __attribute__((aligned(4096)));

/* high maps RAM above 4 GiB (from the e820 map) with 2 MiB pages, writes a
 * marker at its first and last 8 bytes and reads them back. */
static void high(u8 *zeropage)
{
	u64 top = 0;
	u8 n = zeropage[0x1e8];
	for (u8 i = 0; i < n; i++) {
		u8 *e = zeropage + 0x2d0 + 20 * i;
		u64 end = *(u64 *)e + *(u64 *)(e + 8);
		if (*(u32 *)(e + 16) == 1 && end > top)
			top = end;
	}
	if (top <= 0x100000000UL) {
		puts("probe: high none\n");
		return;
	}
	if (top > 0x100000000UL + ((u64)HIGH_PDS << 30)) {
		puts("probe: high error RAM beyond what the probe maps\n");
		return;
	}
	u64 cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	u64 *pdpt = (u64 *)(*(u64 *)(cr3 & ~0xfffUL) & ~0xfffUL);
	for (u64 g = 0; g < HIGH_PDS; g++) {
		for (u64 j = 0; j < 512; j++)
			high_pd[g][j] = (0x100000000UL + (g << 30) + (j << 21)) | 0x83;
		pdpt[4 + g] = (u64)high_pd[g] | 3;
	}
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory"); /* flush the TLB */
	volatile u64 *first = (volatile u64 *)0x100000000UL;
	volatile u64 *last = (volatile u64 *)(top - 8);
	*first = 0x7468617768696768UL; /* "thawhigh" little-endian reversed */
	*last = top;
	int ok = *first == 0x7468617768696768UL && *last == top;
	puts(ok ? "probe: high ok top=" : "probe: high mismatch top=");
	puthex(top);
	putc('\n');
}

void probe_main(u8 *zeropage)
{
	const char *cmdline = (const char *)(u64)*(u32 *)(zeropage + 0x228);
	puts("probe: boot cmdline=\"");
	puts(cmdline);
	puts("\"\n");

	/* ram is the RAM in the e820 map; ram_top the end of the highest RAM
	 * below 4 GiB (the boot page tables map only that). */
	u64 ram = 0, ram_top = 0;
	u8 n = zeropage[0x1e8];
	for (u8 i = 0; i < n; i++) {
		u8 *e = zeropage + 0x2d0 + 20 * i;
		if (*(u32 *)(e + 16) != 1)
			continue;
		u64 end = *(u64 *)e + *(u64 *)(e + 8);
		ram += *(u64 *)(e + 8);
		if (end <= 0x100000000UL && end > ram_top)
			ram_top = end;
	}
	puts("probe: ram ");
	putdec(ram);
	putc('\n');

	u64 ncpus = param(cmdline, "probe.smp", 0);
	if (ncpus > 1)
		smp(ncpus);
	if (param(cmdline, "probe.high", 0))
		high(zeropage);
	u64 n_exits = param(cmdline, "probe.exits", 0);
	if (n_exits) {
		/* Port 0x80 (the POST code port Linux uses for I/O delays) is
		 * unclaimed: each write is one exit through the VMM's port bus. */
		puts("probe: exits start\n");
		for (u64 i = 0; i < n_exits; i++)
			outb(0x80, (u8)i);
		puts("probe: exits done\n");
	}
	u64 n_chaos = param(cmdline, "probe.chaos", 0);
	if (n_chaos)
		chaos(n_chaos, ram);
	if (param(cmdline, "probe.triple", 0)) {
		puts("probe: triple fault\n");
		/* An empty IDT turns the #UD into #DF, then a triple fault. */
		struct idtr none = {0, 0};
		__asm__ volatile("lidt %0; ud2" : : "m"(none));
	}
	if (param(cmdline, "probe.hang", 0)) {
		puts("probe: hang\n");
		for (;;)
			__asm__ volatile("cli; hlt");
	}

	u64 base;
	if (virtio_find(cmdline, 2, &base))
		virtio_blk_run(cmdline, base);
	if (virtio_find(cmdline, 19, &base))
		virtio_vsock_start(cmdline, base);

	u64 pages = param(cmdline, "probe.pages", 256);
	u64 want = param(cmdline, "probe.ticks", 3);
	u64 spin = param(cmdline, "probe.spin", 100000);
	int idle = param(cmdline, "probe.idle", 0) != 0;
	if (PATTERN_BASE + pages * 4096 > ram) {
		puts("probe: error pattern does not fit in RAM\n");
		pages = 0;
	}
	volatile u64 *p = (volatile u64 *)PATTERN_BASE;
	for (u64 i = 0; i < pages * 512; i++)
		p[i] = i * 0x9e3779b97f4a7c15UL;
	u64 sum = checksum(pages);
	puts("probe: pattern pages=");
	putdec(pages);
	puts(" sum=");
	puthex(sum);
	putc('\n');

	ws_pages = param(cmdline, "probe.ws", 0) * 256;
	ws_chunk = param(cmdline, "probe.ws.chunk", 256);
	if (ws_pages && (pages * 4096 > WS_BASE - PATTERN_BASE || WS_BASE + ws_pages * 4096 > ram_top)) {
		puts("probe: error working set does not fit in RAM above the pattern\n");
		ws_pages = 0;
	}
	if (ws_pages) {
		ws_fill();
		puts("probe: ws pages=");
		putdec(ws_pages);
		puts(" chunk=");
		putdec(ws_chunk);
		putc('\n');
	}

	u8 prev = 0;
	while (want == 0 || ticks < want) {
		if (idle && ticks)
			__asm__ volatile("cli; hlt" : : : "memory");
		else
			for (volatile u64 i = 0; i < spin; i++)
				virtio_vsock_poll();
		/* Echo serial input (LSR bit 0: data ready). */
		while (inb(COM1 + 5) & 1) {
			puts("probe: serial ");
			puthexn(inb(COM1), 2);
			putc('\n');
		}
		/* Poll the keyboard controller: status bit 0 = data waiting. */
		while (inb(0x64) & 1) {
			u8 k = inb(0x60);
			puts("probe: key ");
			puthexn(k, 2);
			putc('\n');
			if (prev == 0xe0 && k == 0x71) { /* Delete, after Ctrl and Alt */
				puts("probe: ctrl-alt-del\n");
				outb(0x64, 0xfe);
			}
			prev = k;
		}
		ticks++;
		virtio_blk_tick(ticks);
		ws_tick();
		puts("probe: tick ");
		putdec(ticks);
		puts(" sum=");
		puthex(checksum(pages));
		putc('\n');
	}
	puts("probe: done\n");
	/* Pulse the CPU reset line through the i8042 controller. */
	outb(0x64, 0xfe);
	for (;;)
		__asm__ volatile("hlt");
}
