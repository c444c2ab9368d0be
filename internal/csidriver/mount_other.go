//go:build !linux

package csidriver

import "errors"

var errNotLinux = errors.New("bind mounts are only supported on Linux")

func bindMountReadOnly(string, string) error { return errNotLinux }
func unmount(string) error                   { return errNotLinux }
func isMountPoint(string) (bool, error)      { return false, errNotLinux }
