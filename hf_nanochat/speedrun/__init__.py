"""The speedrun: one command runs the whole pipeline for a hardware recipe and writes its report."""
