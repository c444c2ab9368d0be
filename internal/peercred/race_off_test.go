//go:build !race

package peercred

const raceEnabled = false
