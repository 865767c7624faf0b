.PHONY: serve test bench
serve:
	python3 scripts/dev.py serve
test:
	python3 scripts/dev.py test
bench:
	python3 scripts/dev.py bench
