"""Names of the paper's spot trace that tests compare against (written here, never read from the
package, so a renamed built-in fails them)."""

PAPER = "paper"  # the built-in name of the paper's AWS c3.2xlarge trace
PAPER_SOURCE = "paper (AWS c3.2xlarge)"
