/*
 * Polling virtio-vsock driver of the probe guest (virtio 1.2 section 5.10):
 * an echo server on probe.vsock.port (default 1024) for host-initiated
 * connections, and with probe.vsock.connect=<port> one guest-initiated
 * connection to the host that sends "hello from probe\n" and prints what
 * comes back; probe.vsock.debug=1 prints every packet received. Flow
 * control follows the spec's credit rules: our buf_alloc is the echo
 * buffer, fwd_cnt counts bytes echoed back, and we only send what the
 * peer's credit allows.
 */
#include "probe.h"

enum {
	OP_REQUEST = 1, OP_RESPONSE = 2, OP_RST = 3, OP_SHUTDOWN = 4, OP_RW = 5,
	OP_CREDIT_UPDATE = 6, OP_CREDIT_REQUEST = 7,
	TYPE_STREAM = 1, HOST_CID = 2,
	NRX = 16, RXDATA = 4096, MAXCONN = 8, BUF = 65536,
	RXQ = 0, TXQ = 1, EVQ = 2, VSOCK_MMIO_CONFIG = 0x100,
	EVENT_TRANSPORT_RESET = 0,
};

struct hdr {
	u64 src_cid, dst_cid;
	u32 src_port, dst_port, len;
	u16 type, op;
	u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

static struct ring_page rings[3];
static struct vq qs[3] = {{.r = &rings[0]}, {.r = &rings[1]}, {.r = &rings[2]}};
static struct { struct hdr h; u8 data[RXDATA]; } rxbuf[NRX];
static struct hdr txhdr;
static u8 txdata[RXDATA];
static u64 evbuf;
static u64 guest_cid;
static u32 listen_port;
static u64 debug;
static int active;

struct conn {
	int used, echo, credit_requested;
	u32 local_port, peer_port;
	u32 peer_buf_alloc, peer_fwd_cnt, tx_cnt, fwd_cnt;
	u64 received;
	u32 head, len; /* ring buffer of bytes waiting to be echoed */
	u8 buf[BUF];
};
static struct conn conns[MAXCONN];

static void post_rx(u16 i)
{
	vq_set_desc(&qs[RXQ], (u16)(2 * i), &rxbuf[i].h, sizeof(struct hdr), DESC_F_WRITE | DESC_F_NEXT, (u16)(2 * i + 1));
	vq_set_desc(&qs[RXQ], (u16)(2 * i + 1), rxbuf[i].data, RXDATA, DESC_F_WRITE, 0);
	vq_submit(&qs[RXQ], (u16)(2 * i));
}

static void post_event(void)
{
	vq_set_desc(&qs[EVQ], 0, &evbuf, sizeof(evbuf), DESC_F_WRITE, 0);
	vq_submit(&qs[EVQ], 0);
}

/* send transmits one packet and waits for the device to take it. */
static void send(struct conn *c, u32 local, u32 peer, u16 op, u32 flags, const u8 *data, u32 len)
{
	struct vq *q = &qs[TXQ];
	txhdr.src_cid = guest_cid;
	txhdr.dst_cid = HOST_CID;
	txhdr.src_port = local;
	txhdr.dst_port = peer;
	txhdr.len = len;
	txhdr.type = TYPE_STREAM;
	txhdr.op = op;
	txhdr.flags = flags;
	txhdr.buf_alloc = c ? BUF : 0;
	txhdr.fwd_cnt = c ? c->fwd_cnt : 0;
	if (len) {
		memcpy(txdata, data, len);
		vq_set_desc(q, 0, &txhdr, sizeof(txhdr), DESC_F_NEXT, 1);
		vq_set_desc(q, 1, txdata, len, 0, 0);
	} else {
		vq_set_desc(q, 0, &txhdr, sizeof(txhdr), 0, 0);
	}
	u16 before = q->last_used;
	vq_submit(q, 0);
	vq_notify(q);
	for (u64 i = 0; i < 100000000; i++) {
		if (q->r->used_idx != before) {
			q->last_used++;
			return;
		}
	}
	puts("probe: vsock error tx timeout\n");
}

static struct conn *find(u32 local, u32 peer)
{
	for (int i = 0; i < MAXCONN; i++)
		if (conns[i].used && conns[i].local_port == local && conns[i].peer_port == peer)
			return &conns[i];
	return 0;
}

static struct conn *alloc(u32 local, u32 peer, int echo)
{
	for (int i = 0; i < MAXCONN; i++) {
		struct conn *c = &conns[i];
		if (!c->used) {
			memset(c, 0, sizeof(*c) - BUF);
			c->used = 1;
			c->echo = echo;
			c->local_port = local;
			c->peer_port = peer;
			return c;
		}
	}
	return 0;
}

/* flush echoes buffered bytes as far as the peer's credit allows. */
static void flush(struct conn *c)
{
	while (c->len > 0) {
		u32 credit = c->peer_buf_alloc - (c->tx_cnt - c->peer_fwd_cnt);
		u32 n = c->len;
		if (n > credit) n = credit;
		if (n > RXDATA) n = RXDATA;
		if (BUF - c->head < n) n = BUF - c->head;
		if (n == 0) {
			if (!c->credit_requested) {
				send(c, c->local_port, c->peer_port, OP_CREDIT_REQUEST, 0, 0, 0);
				c->credit_requested = 1;
			}
			return;
		}
		c->fwd_cnt += n; /* consumed: the bytes leave our buffer now */
		send(c, c->local_port, c->peer_port, OP_RW, 0, c->buf + c->head, n);
		c->tx_cnt += n;
		c->head = (c->head + n) % BUF;
		c->len -= n;
	}
}

static void handle(struct hdr *h, u8 *data)
{
	if (debug) {
		puts("probe: vsock rx op=");
		putdec(h->op);
		puts(" src=");
		putdec(h->src_cid);
		putc(':');
		putdec(h->src_port);
		puts(" dst=");
		putdec(h->dst_cid);
		putc(':');
		putdec(h->dst_port);
		puts(" len=");
		putdec(h->len);
		puts(" type=");
		putdec(h->type);
		putc('\n');
	}
	if (h->type != TYPE_STREAM || h->dst_cid != guest_cid) {
		send(0, h->dst_port, h->src_port, OP_RST, 0, 0, 0);
		return;
	}
	struct conn *c = find(h->dst_port, h->src_port);
	if (c) {
		c->peer_buf_alloc = h->buf_alloc;
		c->peer_fwd_cnt = h->fwd_cnt;
	}
	switch (h->op) {
	case OP_REQUEST:
		if (c || h->dst_port != listen_port || !(c = alloc(h->dst_port, h->src_port, 1))) {
			send(0, h->dst_port, h->src_port, OP_RST, 0, 0, 0);
			return;
		}
		c->peer_buf_alloc = h->buf_alloc;
		c->peer_fwd_cnt = h->fwd_cnt;
		send(c, c->local_port, c->peer_port, OP_RESPONSE, 0, 0, 0);
		puts("probe: vsock accept port=");
		putdec(h->src_port);
		putc('\n');
		return;
	case OP_RESPONSE:
		if (c) {
			puts("probe: vsock connected port=");
			putdec(c->peer_port);
			putc('\n');
			static const char hello[] = "hello from probe\n";
			send(c, c->local_port, c->peer_port, OP_RW, 0, (const u8 *)hello, sizeof(hello) - 1);
			c->tx_cnt += sizeof(hello) - 1;
		}
		return;
	case OP_RW:
		if (!c) {
			send(0, h->dst_port, h->src_port, OP_RST, 0, 0, 0);
			return;
		}
		c->received += h->len;
		if (c->echo) {
			u32 n = h->len;
			if (n > BUF - c->len) n = BUF - c->len; /* a peer ignoring our credit loses bytes */
			u32 tail = (c->head + c->len) % BUF;
			u32 first = n < BUF - tail ? n : BUF - tail;
			memcpy(c->buf + tail, data, first);
			memcpy(c->buf, data + first, n - first);
			c->len += n;
			flush(c);
		} else {
			c->fwd_cnt += h->len;
			puts("probe: vsock got ");
			for (u32 i = 0; i < h->len && i < 200; i++)
				if (data[i] >= ' ' && data[i] <= '~')
					putc((char)data[i]);
			putc('\n');
		}
		return;
	case OP_CREDIT_UPDATE:
		if (c) {
			c->credit_requested = 0;
			flush(c);
		}
		return;
	case OP_CREDIT_REQUEST:
		if (c)
			send(c, c->local_port, c->peer_port, OP_CREDIT_UPDATE, 0, 0, 0);
		return;
	case OP_SHUTDOWN:
	case OP_RST:
		if (c) {
			if (h->op == OP_SHUTDOWN)
				send(c, c->local_port, c->peer_port, OP_RST, 0, 0, 0);
			puts("probe: vsock closed port=");
			putdec(c->peer_port);
			puts(" bytes=");
			putdec(c->received);
			putc('\n');
			c->used = 0;
		}
		return;
	}
}

/* virtio_vsock_start initialises the device, starts listening and, with
 * probe.vsock.connect, opens the guest-initiated connection. */
void virtio_vsock_start(const char *cmdline, u64 base)
{
	listen_port = (u32)param(cmdline, "probe.vsock.port", 1024);
	debug = param(cmdline, "probe.vsock.debug", 0);
	if (virtio_init(base, 0, qs, 3))
		return;
	guest_cid = *(volatile u64 *)(base + VSOCK_MMIO_CONFIG);
	for (u16 i = 0; i < NRX; i++)
		post_rx(i);
	vq_notify(&qs[RXQ]);
	post_event();
	vq_notify(&qs[EVQ]);
	active = 1;
	puts("probe: vsock cid=");
	putdec(guest_cid);
	puts(" listen=");
	putdec(listen_port);
	putc('\n');
	u32 port = (u32)param(cmdline, "probe.vsock.connect", 0);
	if (port) {
		struct conn *c = alloc(50000, port, 0);
		send(c, c->local_port, c->peer_port, OP_REQUEST, 0, 0, 0);
	}
}

void virtio_vsock_poll(void)
{
	if (!active)
		return;
	struct vq *rx = &qs[RXQ];
	int posted = 0;
	while (rx->r->used_idx != rx->last_used) {
		barrier();
		u16 head = (u16)rx->r->used_ring[rx->last_used % rx->size].id;
		rx->last_used++;
		u16 i = head / 2;
		if (i < NRX) {
			struct hdr *h = &rxbuf[i].h;
			if (h->len <= RXDATA)
				handle(h, rxbuf[i].data);
			post_rx(i);
			posted = 1;
		}
	}
	if (posted)
		vq_notify(rx);
	struct vq *ev = &qs[EVQ];
	if (ev->r->used_idx != ev->last_used) {
		barrier();
		ev->last_used++;
		puts("probe: vsock event id=");
		putdec((u32)evbuf);
		putc('\n');
		if ((u32)evbuf == EVENT_TRANSPORT_RESET)
			for (int i = 0; i < MAXCONN; i++)
				conns[i].used = 0;
		post_event();
		vq_notify(ev);
	}
}
