// Package uffd is Thaw's userfaultfd page server: it restores guest memory
// lazily by answering a VMM's page faults with pages of a snapshot's memory
// file, prefetches in the background the pages a recording says the guest
// will want, and records such access logs. It also holds the VMM's side of
// the set-up (Register, SendHandshake), so that our VMM and the tests' fake
// VMM use the very code Firecracker-compatibility is tested with.
//
// # Life of a restore
//
//	l, _ := uffd.Listen(sock)            // before the VMM starts
//	// start the VMM; PUT /snapshot/load with the Uffd backend and sock
//	hs, _ := l.Accept(ctx)                // Firecracker's handshake
//	src, _ := uffd.OpenFile(memPath)      // MAP_PRIVATE, read-only
//	order := uffd.LoadAccessLog(logPath, src, log) // nil: sequential
//	srv, _ := uffd.NewServer(uffd.ServerParams{Handshake: hs, Source: src, Order: order, Logger: log})
//	defer srv.Close()
//	err := srv.Serve(ctx) // nil when ctx ends or the VMM goes away
//
// The VMM side is Register (create a non-blocking, close-on-exec
// userfaultfd with UFFD_FEATURE_EVENT_REMOVE and register the regions
// MISSING) and SendHandshake/SendHandshakeTo (one JSON message with the
// uffd in SCM_RIGHTS, byte-compatible with Firecracker v1.14).
//
// # Serving
//
// Serve runs one loop in the caller's goroutine and starts no others
// (context.AfterFunc runs one to wake it when its context ends). Every
// system call on the uffd runs inside (*os.File).SyscallConn().Control, so
// Close cannot free the fd number while an ioctl uses it and a reused number
// can never make one server answer another VMM's faults. Each iteration
// reads every pending message with non-blocking read(2) and answers faults
// with UFFDIO_COPY; only when nothing is pending does the prefetcher copy
// one run (contiguous missing pages, one multi-page UFFDIO_COPY with
// DONTWAKE, then one UFFDIO_WAKE); with nothing to do it sleeps in poll(2)
// on the uffd, a pidfd of the VMM and an eventfd that Close and the end of
// its context write to, so an idle server costs no CPU (Config.PollInterval
// only bounds the sleep, as a safety net).
// Config.PrefetchRate caps the prefetcher's bytes per second without ever
// delaying a fault: runs are spaced on a virtual clock (see pacer), and
// while the next run is not yet due that poll(2) sleeps until it is, so a
// fault still wakes Serve at once.
// All-zero 4 KiB pages are installed with UFFDIO_ZEROPAGE (read faults and
// prefetch; write faults copy), so they cost the VM no memory until written.
//
// Kernel answers (Documentation/admin-guide/mm/userfaultfd.rst):
//   - EEXIST: the page is already there (another copy won); UFFDIO_WAKE the
//     range, or the faulting thread sleeps forever.
//   - EAGAIN: the address space is changing (a REMOVE event is pending);
//     drain events, then retry the deferred faults. A partial multi-page
//     copy also returns EAGAIN, with the bytes copied.
//   - ENOENT: the range is no longer registered (unregistered after a
//     REMOVE, or unmapped); wake and move on.
//   - ESRCH: the VMM's address space is gone: a clean stop.
//
// REMOVE events (MADV_DONTNEED, e.g. from a balloon) unregister the range:
// later touches get fresh zero pages from the kernel, and the prefetcher
// never copies those pages again. A fault outside every region, a remap, or
// a copy the kernel refuses otherwise is fatal and returned from Serve.
//
// # The VMM going away
//
// The kernel does not signal a userfaultfd when the process owning the
// registered memory exits: reads just find nothing and poll(2) reports
// nothing. So the Listener keeps a pidfd of the process that sent the
// handshake (SO_PEERPIDFD, or pidfd_open of the SO_PEERCRED pid on older
// kernels) and Serve polls it; copies into a dead address space also fail
// with ESRCH. Firecracker sends the handshake from the VMM process itself.
// Closing the page server's uffd does not release the VMM's blocked
// threads while the VMM holds its own copy: the owner must stop the VMM.
//
// # Prefetch order, recording and settling
//
// An AccessLog lists page offsets in the memory file in first-install
// order; the prefetcher replays it (and copies nothing else), or walks
// every page in file order when there is none. A Recorder streams such a
// log to disk during a recording run (prefetch off); the Settle detector
// (see SettleConfig for its exact definition) decides when the fault rate
// has converged. The log's header carries a cheap identity of its memory
// file (see FileIdentity); LoadAccessLog ignores, with a warning, a log for
// another file.
package uffd
