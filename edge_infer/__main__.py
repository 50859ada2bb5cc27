from edge_infer.cli import main

main()
