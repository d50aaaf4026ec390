"""The command line: a module a subcommand, shared argument helpers in args."""
