/* Shared helpers of the probe guest: port I/O, serial output, parameters. */
#ifndef PROBE_H
#define PROBE_H

typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }

void putc(char c);
void puts(const char *s);
void putdec(u64 v);
void puthexn(u64 v, int digits);
void puthex(u64 v);
u64 param(const char *cmdline, const char *name, u64 def);
void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);

/* Split virtqueues (virtio 1.2 section 2.7): one queue's rings in one
 * page: 64 descriptors, then the available ring, then the used ring. */
enum { QSIZE = 64, DESC_F_NEXT = 1, DESC_F_WRITE = 2 };
struct desc { u64 addr; u32 len; u16 flags; u16 next; } __attribute__((packed));
struct ring_page {
	struct desc desc[QSIZE];
	u16 avail_flags, avail_idx, avail_ring[QSIZE], used_event;
	u8 pad[2048 - 1024 - 6 - 2 * QSIZE];
	u16 used_flags, used_idx;
	struct { u32 id, len; } used_ring[QSIZE];
	u16 avail_event;
} __attribute__((packed, aligned(4096)));
struct vq {
	u64 base;
	u16 index, size, last_used;
	volatile struct ring_page *r;
};

/* virtio.c */
int virtio_find(const char *cmdline, u32 device_id, u64 *base);
int virtio_init(u64 base, u64 features_lo, struct vq *queues, int nqueues);
void vq_set_desc(struct vq *q, u16 i, void *addr, u32 len, u16 flags, u16 next);
void vq_submit(struct vq *q, u16 head);
void vq_notify(struct vq *q);
void virtio_blk_run(const char *cmdline, u64 base);
void virtio_blk_tick(u64 tick);
/* vsock.c */
void virtio_vsock_start(const char *cmdline, u64 base);
void virtio_vsock_poll(void);

#endif
