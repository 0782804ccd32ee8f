"""Performance benchmarks: our code and a named peer, same process, same input, ratio printed."""
