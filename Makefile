.PHONY: serve test
serve:
	python3 scripts/dev.py serve
test:
	python3 scripts/dev.py test
