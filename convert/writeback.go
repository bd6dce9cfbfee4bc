package convert

// writebackBytes is how much output is written between two writeback
// requests.
const writebackBytes = 16 << 20

// writeback asks the kernel to start writing the output to disk while the
// conversion goes on, so the fsync before the rename finds little left to
// flush: the disk works in parallel with reading and encoding instead of
// after them. The requests run on their own goroutine, as one can wait on
// a busy disk queue.
type writeback struct {
	fd      uintptr
	pending int64
	kick    chan struct{}
	done    chan struct{}
}

func newWriteback(fd uintptr) *writeback {
	if !writebackSupported {
		return nil
	}
	wb := &writeback{fd: fd, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(wb.done)
		for range wb.kick {
			startWriteback(wb.fd)
		}
	}()
	return wb
}

// wrote notes n bytes written and requests writeback every writebackBytes,
// never waiting: a request already queued covers the new bytes too.
func (wb *writeback) wrote(n int) {
	if wb == nil {
		return
	}
	wb.pending += int64(n)
	if wb.pending < writebackBytes {
		return
	}
	wb.pending = 0
	select {
	case wb.kick <- struct{}{}:
	default:
	}
}

// stop ends the requests and waits for the last one.
func (wb *writeback) stop() {
	if wb == nil {
		return
	}
	close(wb.kick)
	<-wb.done
}
