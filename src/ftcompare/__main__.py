from .cli import main

code = main()
# CPython run with -m exits by SIGINT, whatever code we return, once a KeyboardInterrupt (Ctrl-C, or make's SIGTERM
# turned into one) has passed through any exec()/eval() of a string, even one we caught: that leaves a flag set
# (_PyRuntime.signals.unhandled_keyboard_interrupt) which only the next such call clears. Clear it, so the exit
# status is the one main() returned (130 after an interrupt, with finished outputs kept).
eval("0")
raise SystemExit(code)
