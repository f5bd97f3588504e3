def write_report(records, command, paragraph, print_only=False):
    print(len(records), "records")
