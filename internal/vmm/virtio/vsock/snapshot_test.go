package vsock

import (
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/virtiotest"
)

func TestRestoreSendsTransportReset(t *testing.T) {
	dev, path := newDevice(t)
	mem := virtiotest.NewMem(t, 0x100000, 16<<20)
	irq := virtiotest.NewIRQ()
	m := virtio.NewMMIO(dev, mem, irq, discard())
	g := startGuest(t, m, mem, irq, defaultGuestBuf, smallRxBuf, true)
	accepted := g.Listen(52)
	go func() {
		for c := range accepted {
			go echoErr(c) // the first connection is reset by the restore
		}
	}()
	c, r, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake %q", line)
	}
	c.Write([]byte("x"))
	if b, _ := r.ReadByte(); b != 'x' {
		t.Fatalf("echo before snapshot: %q", b)
	}
	// Snapshot: pause the guest and the device, save both states, tear
	// the VMM down.
	g.shutdown()
	m.Pause()
	mst, dst := m.State(), dev.State()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("Close left %s behind (stat: %v)", path, err)
	}
	blob, _ := json.Marshal(struct {
		M virtio.State
		D State
	}{mst, dst})
	var back struct {
		M virtio.State
		D State
	}
	if err := json.Unmarshal(blob, &back); err != nil {
		t.Fatal(err)
	}
	// The host's connection died with the old VMM.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.ReadByte(); err == nil {
		t.Error("host connection survived the VMM")
	}
	// Restore: same guest memory, new device and transport.
	if _, err := Restore(Config{GuestCID: 4, UDSPath: path}, back.D, discard()); err == nil {
		t.Error("restore with a different CID: got nil error")
	}
	dev2, err := Restore(Config{GuestCID: guestCID, UDSPath: path}, back.D, discard())
	if err != nil {
		t.Fatal(err)
	}
	m2, err := virtio.RestoreMMIO(dev2, mem, irq, discard(), back.M)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	g2 := &guest{}
	*g2 = guest{t: t, mmio: m2, bufAlloc: defaultGuestBuf, rxSize: smallRxBuf,
		conns: map[gkey]*gconn{}, listeners: g.listeners, nextPort: g.nextPort,
		rxAddr: g.rxAddr, txAddr: g.txAddr, evAddr: g.evAddr, txFree: g.txFree,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	g2.cond = sync.NewCond(&g2.mu)
	g2.drv = g.drv
	g2.drv.Dev = m2
	g2.rx, g2.tx, g2.evq = g.rx, g.tx, g.evq
	// The guest kernel's connections survive in guest memory; the new
	// guest loop starts with the same (fresh copies, to keep the old
	// loop's goroutines out of it).
	for k := range g.conns {
		g2.conns[k] = &gconn{g: g2, key: k, state: gEstablished}
	}
	if len(g2.conns) == 0 {
		t.Fatal("no guest connection was live at snapshot time")
	}
	go g2.loop()
	defer g2.shutdown()
	deadline := time.Now().Add(10 * time.Second)
	for len(g2.Events()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if ev := g2.Events(); len(ev) != 1 || ev[0] != abi.VsockEventTransportReset {
		t.Fatalf("events after restore: %v, want one TRANSPORT_RESET (0)", ev)
	}
	g2.mu.Lock()
	live := len(g2.conns)
	g2.mu.Unlock()
	if live != 0 {
		t.Errorf("guest still has %d connections after TRANSPORT_RESET", live)
	}
	// The guest's listener survived: new host connections work.
	c2, r2, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake after restore %q", line)
	}
	roundTrip(t, c2, r2, payload(9, 100<<10))
}

// TestPauseResume pauses the device as a snapshot does and resumes the
// same VM: live connections are reset, the guest hears TRANSPORT_RESET,
// and new connections work.
func TestPauseResume(t *testing.T) {
	dev, path := newDevice(t)
	mem := virtiotest.NewMem(t, 0x100000, 16<<20)
	irq := virtiotest.NewIRQ()
	m := virtio.NewMMIO(dev, mem, irq, discard())
	defer m.Close()
	g := startGuest(t, m, mem, irq, defaultGuestBuf, smallRxBuf, true)
	defer g.shutdown()
	accepted := g.Listen(52)
	go func() {
		for c := range accepted {
			go echoErr(c)
		}
	}()
	c, r, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake %q", line)
	}
	m.Pause()
	waitEOF := func() error {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := r.ReadByte()
		return err
	}
	if err := waitEOF(); err == nil || os.IsTimeout(err) {
		t.Errorf("host connection after Pause: read error %v, want it closed", err)
	}
	before := m.State()
	m.Resume()
	deadline := time.Now().Add(10 * time.Second)
	for len(g.Events()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if ev := g.Events(); len(ev) != 1 || ev[0] != abi.VsockEventTransportReset {
		t.Fatalf("events after resume: %v, want one TRANSPORT_RESET", ev)
	}
	if got := m.State(); got.Queues[abi.VsockQueueEvent].NextUsed != before.Queues[abi.VsockQueueEvent].NextUsed+1 {
		t.Errorf("event queue used index %d, want %d", got.Queues[abi.VsockQueueEvent].NextUsed, before.Queues[abi.VsockQueueEvent].NextUsed+1)
	}
	c2, r2, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake after resume %q", line)
	}
	roundTrip(t, c2, r2, payload(11, 300<<10))
}
