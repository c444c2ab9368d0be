//go:build !linux

package peercred

import (
	"fmt"
	"io"
	"os"
)

// readFileAt reads the NUL-terminated path once at offset 0 into buf.
func readFileAt(path []byte, buf []byte) (int, error) {
	name := string(path[:len(path)-1])
	f, err := os.Open(name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return 0, fmt.Errorf("read %s: %w", name, err)
	}
	return n, nil
}
