"""Plain-torch reference implementations of every snnopt op: the test oracle and the fallback."""
