"""``python -m helper.teachers``: list, fetch and register teachers (helper/teachers/zoo.py)."""
from helper.teachers.zoo import main

if __name__ == "__main__":
    main()
