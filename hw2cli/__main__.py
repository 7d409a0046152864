from hw2cli.app import run

run()
