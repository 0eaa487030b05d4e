/*
 * Polling virtio-mmio drivers of the probe guest (virtio 1.2: 4.2 MMIO
 * transport version 2, 2.7 split virtqueues, 5.2 block, 5.10 socket).
 * Interrupts stay off: the driver notifies through QueueNotify and polls
 * the used rings. Devices are found on the kernel command line, where the
 * VMM announces them Firecracker's way: virtio_mmio.device=4K@0x<addr>:<irq>.
 */
#include "probe.h"

enum {
	MMIO_MAGIC = 0x000, MMIO_VERSION = 0x004, MMIO_DEVICE_ID = 0x008,
	MMIO_DEVICE_FEATURES = 0x010, MMIO_DEVICE_FEATURES_SEL = 0x014,
	MMIO_DRIVER_FEATURES = 0x020, MMIO_DRIVER_FEATURES_SEL = 0x024,
	MMIO_QUEUE_SEL = 0x030, MMIO_QUEUE_NUM_MAX = 0x034, MMIO_QUEUE_NUM = 0x038,
	MMIO_QUEUE_READY = 0x044, MMIO_QUEUE_NOTIFY = 0x050,
	MMIO_INTERRUPT_STATUS = 0x060, MMIO_INTERRUPT_ACK = 0x064, MMIO_STATUS = 0x070,
	MMIO_QUEUE_DESC_LOW = 0x080, MMIO_QUEUE_DESC_HIGH = 0x084,
	MMIO_QUEUE_DRIVER_LOW = 0x090, MMIO_QUEUE_DRIVER_HIGH = 0x094,
	MMIO_QUEUE_DEVICE_LOW = 0x0a0, MMIO_QUEUE_DEVICE_HIGH = 0x0a4,
	MMIO_CONFIG = 0x100,

	STATUS_ACK = 1, STATUS_DRIVER = 2, STATUS_DRIVER_OK = 4, STATUS_FEATURES_OK = 8,
	STATUS_NEEDS_RESET = 0x40, STATUS_FAILED = 0x80,

	ID_BLOCK = 2, ID_VSOCK = 19,
};

static u64 parse_hex(const char *p, const char **end)
{
	u64 v = 0;
	for (;; p++) {
		char c = *p;
		if (c >= '0' && c <= '9') v = v * 16 + (u64)(c - '0');
		else if (c >= 'a' && c <= 'f') v = v * 16 + (u64)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F') v = v * 16 + (u64)(c - 'A' + 10);
		else break;
	}
	*end = p;
	return v;
}

/* virtio_find returns 1 and the window's base for the first device of type
 * device_id announced on the command line. */
int virtio_find(const char *cmdline, u32 device_id, u64 *base)
{
	static const char key[] = "virtio_mmio.device=";
	for (const char *p = cmdline; *p; p++) {
		const char *a = p, *b = key;
		while (*b && *a == *b) { a++; b++; }
		if (*b)
			continue;
		while (*a && *a != '@') a++;
		if (a[0] != '@' || a[1] != '0' || a[2] != 'x')
			continue;
		const char *end;
		u64 addr = parse_hex(a + 3, &end);
		if (mmio_read32(addr + MMIO_MAGIC) == 0x74726976 && mmio_read32(addr + MMIO_DEVICE_ID) == device_id) {
			*base = addr;
			return 1;
		}
	}
	return 0;
}

static void status_or(u64 base, u32 bits)
{
	mmio_write32(base + MMIO_STATUS, mmio_read32(base + MMIO_STATUS) | bits);
}

/* virtio_init runs the initialisation sequence of spec 3.1.1, negotiating
 * VIRTIO_F_VERSION_1 plus features_lo, and sets up nqueues queues. */
int virtio_init(u64 base, u64 features_lo, struct vq *queues, int nqueues)
{
	if (mmio_read32(base + MMIO_MAGIC) != 0x74726976 || mmio_read32(base + MMIO_VERSION) != 2) {
		puts("probe: virtio error not a version 2 virtio-mmio device\n");
		return -1;
	}
	mmio_write32(base + MMIO_STATUS, 0);
	status_or(base, STATUS_ACK);
	status_or(base, STATUS_DRIVER);
	mmio_write32(base + MMIO_DEVICE_FEATURES_SEL, 1);
	if (!(mmio_read32(base + MMIO_DEVICE_FEATURES) & 1)) {
		puts("probe: virtio error device lacks VIRTIO_F_VERSION_1\n");
		return -1;
	}
	mmio_write32(base + MMIO_DEVICE_FEATURES_SEL, 0);
	u32 lo = mmio_read32(base + MMIO_DEVICE_FEATURES) & (u32)features_lo;
	mmio_write32(base + MMIO_DRIVER_FEATURES_SEL, 0);
	mmio_write32(base + MMIO_DRIVER_FEATURES, lo);
	mmio_write32(base + MMIO_DRIVER_FEATURES_SEL, 1);
	mmio_write32(base + MMIO_DRIVER_FEATURES, 1);
	status_or(base, STATUS_FEATURES_OK);
	if (!(mmio_read32(base + MMIO_STATUS) & STATUS_FEATURES_OK)) {
		puts("probe: virtio error FEATURES_OK not accepted\n");
		return -1;
	}
	for (int i = 0; i < nqueues; i++) {
		struct vq *q = &queues[i];
		mmio_write32(base + MMIO_QUEUE_SEL, (u32)i);
		u32 max = mmio_read32(base + MMIO_QUEUE_NUM_MAX);
		if (max == 0) {
			puts("probe: virtio error queue not available\n");
			return -1;
		}
		q->base = base;
		q->index = (u16)i;
		q->size = (u16)(max < QSIZE ? max : QSIZE);
		q->last_used = 0;
		memset((void *)q->r, 0, sizeof(struct ring_page));
		u64 d = (u64)q->r->desc, av = (u64)&q->r->avail_flags, us = (u64)&q->r->used_flags;
		mmio_write32(base + MMIO_QUEUE_NUM, q->size);
		mmio_write32(base + MMIO_QUEUE_DESC_LOW, (u32)d);
		mmio_write32(base + MMIO_QUEUE_DESC_HIGH, (u32)(d >> 32));
		mmio_write32(base + MMIO_QUEUE_DRIVER_LOW, (u32)av);
		mmio_write32(base + MMIO_QUEUE_DRIVER_HIGH, (u32)(av >> 32));
		mmio_write32(base + MMIO_QUEUE_DEVICE_LOW, (u32)us);
		mmio_write32(base + MMIO_QUEUE_DEVICE_HIGH, (u32)(us >> 32));
		mmio_write32(base + MMIO_QUEUE_READY, 1);
	}
	status_or(base, STATUS_DRIVER_OK);
	if (mmio_read32(base + MMIO_STATUS) & (STATUS_NEEDS_RESET | STATUS_FAILED)) {
		puts("probe: virtio error device needs reset after DRIVER_OK\n");
		return -1;
	}
	return 0;
}

/* vq_submit publishes the chain starting at descriptor head. */
void vq_submit(struct vq *q, u16 head)
{
	q->r->avail_ring[q->r->avail_idx % q->size] = head;
	barrier();
	q->r->avail_idx++;
	barrier();
}

void vq_notify(struct vq *q) { mmio_write32(q->base + MMIO_QUEUE_NOTIFY, q->index); }

/* vq_wait polls until the device used one more buffer; 0 on success. */
static int vq_wait(struct vq *q, u32 *len)
{
	for (u64 i = 0; i < 100000000; i++) {
		if (q->r->used_idx != q->last_used) {
			barrier();
			if (len)
				*len = q->r->used_ring[q->last_used % q->size].len;
			q->last_used++;
			return 0;
		}
	}
	puts("probe: virtio error timeout waiting for the device\n");
	return -1;
}

void vq_set_desc(struct vq *q, u16 i, void *addr, u32 len, u16 flags, u16 next)
{
	volatile struct desc *d = &q->r->desc[i];
	d->addr = (u64)addr;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

/* ---- virtio-blk ---- */

static struct ring_page blk_ring;
static struct vq blk_q = {.r = &blk_ring};
static struct { u32 type, reserved; u64 sector; } __attribute__((packed)) blk_hdr;
static u8 blk_buf[4096] __attribute__((aligned(4096)));
static volatile u8 blk_status;

enum { BLK_T_IN = 0, BLK_T_OUT = 1, BLK_T_FLUSH = 4, BLK_T_GET_ID = 8, BLK_F_RO = 1 << 5 };

static int blk_request(u32 type, u64 sector, u32 len)
{
	blk_hdr.type = type;
	blk_hdr.reserved = 0;
	blk_hdr.sector = sector;
	blk_status = 0xff;
	u16 write = (type == BLK_T_IN || type == BLK_T_GET_ID) ? DESC_F_WRITE : 0;
	if (len) {
		vq_set_desc(&blk_q, 0, &blk_hdr, sizeof(blk_hdr), DESC_F_NEXT, 1);
		vq_set_desc(&blk_q, 1, blk_buf, len, (u16)(write | DESC_F_NEXT), 2);
	} else {
		vq_set_desc(&blk_q, 0, &blk_hdr, sizeof(blk_hdr), DESC_F_NEXT, 2);
	}
	vq_set_desc(&blk_q, 2, (void *)&blk_status, 1, DESC_F_WRITE, 0);
	vq_submit(&blk_q, 0);
	vq_notify(&blk_q);
	if (vq_wait(&blk_q, 0))
		return -1;
	return blk_status;
}

static u64 fnv(const u8 *p, u64 n)
{
	u64 h = 0xcbf29ce484222325UL;
	for (u64 i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3UL;
	return h;
}

/* Set by virtio_blk_run for virtio_blk_tick. */
static u64 blk_every, blk_sectors;

/* virtio_blk_run reads the first sectors and prints their checksum, and
 * with probe.blk.write=1 writes a pattern to the last sector, reads it back
 * and flushes. */
void virtio_blk_run(const char *cmdline, u64 base)
{
	if (virtio_init(base, BLK_F_RO, &blk_q, 1))
		return;
	u64 cap = *(volatile u64 *)(base + MMIO_CONFIG);
	mmio_write32(base + MMIO_DEVICE_FEATURES_SEL, 0);
	u32 ro = mmio_read32(base + MMIO_DEVICE_FEATURES) & BLK_F_RO ? 1 : 0;
	puts("probe: blk capacity=");
	putdec(cap);
	puts(" ro=");
	putdec(ro);
	putc('\n');

	memset(blk_buf, 0, 20);
	int s = blk_request(BLK_T_GET_ID, 0, 20);
	blk_buf[20] = 0;
	puts("probe: blk id status=");
	putdec((u64)s);
	puts(" id=");
	puts((const char *)blk_buf);
	putc('\n');

	u64 n = param(cmdline, "probe.blk.sectors", 8);
	if (n > 8) n = 8;
	if (n > cap) n = cap;
	s = blk_request(BLK_T_IN, 0, (u32)(n * 512));
	puts("probe: blk read sectors=");
	putdec(n);
	puts(" status=");
	putdec((u64)s);
	puts(" sum=");
	puthex(fnv(blk_buf, n * 512));
	putc('\n');

	if (param(cmdline, "probe.blk.write", 0) && cap > 0) {
		u64 last = cap - 1;
		for (int i = 0; i < 512; i++)
			blk_buf[i] = (u8)(i * 7 + 3);
		s = blk_request(BLK_T_OUT, last, 512);
		puts("probe: blk write sector=");
		putdec(last);
		puts(" status=");
		putdec((u64)s);
		putc('\n');
		if (s == 0) {
			memset(blk_buf, 0, 512);
			s = blk_request(BLK_T_IN, last, 512);
			int ok = s == 0;
			for (int i = 0; i < 512 && ok; i++)
				ok = blk_buf[i] == (u8)(i * 7 + 3);
			puts(ok ? "probe: blk readback ok\n" : "probe: blk readback mismatch\n");
			s = blk_request(BLK_T_FLUSH, 0, 0);
			puts("probe: blk flush status=");
			putdec((u64)s);
			putc('\n');
		}
	}
	/* Out-of-range read: the device must answer with an error status. */
	s = blk_request(BLK_T_IN, cap, 512);
	puts("probe: blk read past end status=");
	putdec((u64)s);
	putc('\n');
	blk_sectors = n;
	blk_every = param(cmdline, "probe.blk.every", 0);
}

/* virtio_blk_tick re-reads the first sectors every probe.blk.every ticks
 * (0: never), through the queue set up at boot: after a snapshot restore
 * this proves the device and its ring positions came back. */
void virtio_blk_tick(u64 tick)
{
	if (!blk_every || tick % blk_every)
		return;
	int s = blk_request(BLK_T_IN, 0, (u32)(blk_sectors * 512));
	puts("probe: blk reread tick=");
	putdec(tick);
	puts(" status=");
	putdec((u64)s);
	puts(" sum=");
	puthex(fnv(blk_buf, blk_sectors * 512));
	putc('\n');
}
