from .cli import main
from .environment import exit_process

exit_process(main())   # 130 after an interrupt (finished outputs kept), never death by SIGINT
