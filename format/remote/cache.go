package remote

import (
	"context"
	"sync"
)

// cache holds up to max blocks of the object, fetched by up to fetchers
// range requests at once. A read of block k whose predecessor is cached
// (a sequential reader, such as a converter's workers) fetches the next
// readAhead blocks too. Memory is at most max blocks, plus one per reader
// when every cached block is in use.
type cache struct {
	f      *File
	max    int
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	wg     sync.WaitGroup

	mu     sync.Mutex
	blocks map[int64]*block
	tick   int64
	free   [][]byte
}

type block struct {
	idx      int64
	data     []byte
	n        int // valid bytes
	ready    chan struct{}
	err      error
	used     int64 // tick of the last use, for LRU
	refs     int   // readers copying from it
	demanded bool  // read at least once (a prefetched block may be evicted only after)
}

func newCache(f *File, max int) *cache {
	ctx, cancel := context.WithCancel(context.Background())
	return &cache{f: f, max: max, ctx: ctx, cancel: cancel, sem: make(chan struct{}, fetchers), blocks: map[int64]*block{}}
}

// get returns block idx, filled, with a reference the caller releases.
func (c *cache) get(idx int64) (*block, error) {
	c.mu.Lock()
	c.tick++
	b, ok := c.blocks[idx]
	if !ok {
		c.evict(false)
		b = c.start(idx)
	}
	b.used, b.refs = c.tick, b.refs+1
	first := !b.demanded
	b.demanded = true
	if first {
		if _, seq := c.blocks[idx-1]; seq || idx == 0 {
			c.prefetch(idx)
		}
	}
	c.mu.Unlock()

	<-b.ready
	if b.err != nil {
		c.mu.Lock()
		b.refs--
		if c.blocks[idx] == b {
			delete(c.blocks, idx) // a later read tries again
		}
		c.mu.Unlock()
		return nil, b.err
	}
	return b, nil
}

func (c *cache) release(b *block) {
	c.mu.Lock()
	b.refs--
	c.mu.Unlock()
}

// prefetch starts the blocks after idx that are not cached, while there
// is room without evicting blocks nobody has read yet. Called locked.
func (c *cache) prefetch(idx int64) {
	last := (c.f.info.size - 1) / BlockSize
	for k := idx + 1; k <= min(idx+readAhead, last); k++ {
		if _, ok := c.blocks[k]; ok {
			continue
		}
		if len(c.blocks) >= c.max && !c.evict(true) {
			return
		}
		c.start(k)
	}
}

// evict drops the least recently used block that is filled and not in
// use (onlyRead: and that has been read). Called locked.
func (c *cache) evict(onlyRead bool) bool {
	if len(c.blocks) < c.max {
		return true
	}
	var victim *block
	for _, b := range c.blocks {
		if b.refs > 0 || (onlyRead && !b.demanded) {
			continue
		}
		select {
		case <-b.ready:
		default:
			continue
		}
		if victim == nil || b.used < victim.used {
			victim = b
		}
	}
	if victim == nil {
		return false
	}
	delete(c.blocks, victim.idx)
	if victim.err == nil {
		c.free = append(c.free, victim.data)
	}
	return true
}

// start fetches block idx in the background. Called locked.
func (c *cache) start(idx int64) *block {
	b := &block{idx: idx, ready: make(chan struct{}), used: c.tick}
	if k := len(c.free); k > 0 {
		b.data, c.free = c.free[k-1], c.free[:k-1]
	} else {
		b.data = make([]byte, BlockSize)
	}
	off := idx * BlockSize
	b.n = int(min(BlockSize, c.f.info.size-off))
	c.blocks[idx] = b
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(b.ready)
		select {
		case c.sem <- struct{}{}:
		case <-c.ctx.Done():
			b.err = c.ctx.Err()
			return
		}
		b.err = c.f.readRange(c.ctx, b.data[:b.n], off)
		<-c.sem
	}()
	return b
}

// close stops the fetches and waits for them.
func (c *cache) close() {
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	c.blocks, c.free = nil, nil
	c.mu.Unlock()
}
